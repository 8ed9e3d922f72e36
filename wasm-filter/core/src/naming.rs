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
    fn sanitize_makes_names_label_safe() {
        assert_eq!(sanitize("a.b;c=d"), "a_b_c_d");
        assert!(is_label_safe(&sanitize("")));
        assert!(!is_label_safe("x;y"));
    }
}
