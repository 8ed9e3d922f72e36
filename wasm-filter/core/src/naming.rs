//! Names as they appear in Envoy and in metric labels.

/// The service a cluster name points at. Istio names outbound clusters
/// `outbound|PORT|SUBSET|HOST`; the service is the first label of `HOST`
/// (`reviews.default.svc.cluster.local` → `reviews`). Other names are kept.
pub fn service_from_cluster(cluster: &str) -> &str {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound" | "inbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => {
            host.split('.').next().unwrap_or(host)
        }
        _ => cluster,
    }
}

/// What an Istio cluster name says about a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind<'a> {
    /// `inbound|PORT||`: the local service, server side.
    Inbound,
    /// `outbound|PORT|SUBSET|HOST`: a call to the service named by `HOST`.
    Outbound(&'a str),
    /// Not Istio's naming: the listener direction has to tell.
    Other,
}

/// Classifies a cluster name with Istio's naming, so one property read
/// gives both the direction and the service of a hop.
pub fn classify_cluster(cluster: &str) -> ClusterKind<'_> {
    if cluster.starts_with("inbound|") {
        return ClusterKind::Inbound;
    }
    if cluster.starts_with("outbound|") {
        let svc = service_from_cluster(cluster);
        if svc != cluster && !svc.is_empty() {
            return ClusterKind::Outbound(svc);
        }
    }
    ClusterKind::Other
}

/// The service an `:authority` addresses: the first DNS label, without
/// port (`reviews:9080`, `reviews.bookinfo.svc.cluster.local` → `reviews`).
/// Istio sidecars route by this host, so on outbound hops it names the
/// upstream service without a property read.
pub fn service_from_authority(authority: &str) -> &str {
    let host = authority.rsplit_once(':').map_or(authority, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    });
    host.split('.').next().unwrap_or(host)
}

/// True for names that are safe inside an Envoy stat name and a Prometheus
/// label value without escaping: ASCII letters, digits, `-` and `_`.
pub fn is_label_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Replaces anything that is not label-safe with `_` and bounds the length.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_cluster_names_give_the_service() {
        assert_eq!(
            service_from_cluster("outbound|9080||reviews.default.svc.cluster.local"),
            "reviews"
        );
        assert_eq!(
            service_from_cluster("outbound|9080|v2|reviews.bookinfo.svc.cluster.local"),
            "reviews"
        );
        assert_eq!(service_from_cluster("inbound|9080||"), "inbound|9080||");
        assert_eq!(service_from_cluster("plain"), "plain");
    }

    #[test]
    fn authority_names_the_service() {
        assert_eq!(service_from_authority("reviews:9080"), "reviews");
        assert_eq!(
            service_from_authority("ratings.bookinfo.svc.cluster.local"),
            "ratings"
        );
        assert_eq!(service_from_authority("details"), "details");
        assert_eq!(service_from_authority(""), "");
    }

    #[test]
    fn cluster_kinds() {
        assert_eq!(classify_cluster("inbound|9080||"), ClusterKind::Inbound);
        assert_eq!(
            classify_cluster("outbound|9080||ratings.default.svc.cluster.local"),
            ClusterKind::Outbound("ratings")
        );
        assert_eq!(classify_cluster("outbound|9080||"), ClusterKind::Other);
        assert_eq!(classify_cluster("my_cluster"), ClusterKind::Other);
    }

    #[test]
    fn sanitize_makes_names_label_safe() {
        assert_eq!(sanitize("a.b;c=d"), "a_b_c_d");
        assert!(is_label_safe(&sanitize("")));
        assert!(!is_label_safe("x;y"));
    }
}
