//! Chain assignment at the entry hop: ordered match rules on host, path
//! prefix and method. The first rule that matches names the chain.

use crate::naming::is_label_safe;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainRule {
    pub chain: String,
    /// Exact `:authority` without port, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl ChainRule {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !is_label_safe(&self.chain) {
            return Err(("chain", "use letters, digits, `-` and `_` (at most 64)"));
        }
        if matches!(&self.path_prefix, Some(p) if !p.starts_with('/')) {
            return Err(("path_prefix", "must start with `/`"));
        }
        if matches!(&self.method, Some(m) if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(("method", "must be an upper-case HTTP method"));
        }
        if matches!(&self.host, Some(h) if h.is_empty()) {
            return Err(("host", "must not be empty"));
        }
        Ok(())
    }

    pub fn matches(&self, host: &str, path: &str, method: &str) -> bool {
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        self.host
            .as_deref()
            .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.method.as_deref().is_none_or(|m| m == method)
    }
}

/// Which request headers the rules look at, so the filter reads no other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleNeeds {
    pub host: bool,
    pub path: bool,
    pub method: bool,
}

pub fn needs(rules: &[ChainRule]) -> RuleNeeds {
    rules.iter().fold(RuleNeeds::default(), |n, r| RuleNeeds {
        host: n.host || r.host.is_some(),
        path: n.path || r.path_prefix.is_some(),
        method: n.method || r.method.is_some(),
    })
}

/// The chain of the first matching rule, or `None`.
pub fn assign<'a>(rules: &'a [ChainRule], host: &str, path: &str, method: &str) -> Option<&'a str> {
    rules
        .iter()
        .find(|r| r.matches(host, path, method))
        .map(|r| r.chain.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        chain: &str,
        host: Option<&str>,
        prefix: Option<&str>,
        method: Option<&str>,
    ) -> ChainRule {
        ChainRule {
            chain: chain.into(),
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            method: method.map(Into::into),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule("ratings", None, Some("/api/v1/ratings"), Some("GET")),
            rule("product", Some("bookinfo.example"), Some("/"), None),
            rule("any-post", None, None, Some("POST")),
        ];
        assert_eq!(
            assign(&rules, "x", "/api/v1/ratings/1", "GET"),
            Some("ratings")
        );
        assert_eq!(
            assign(&rules, "x", "/api/v1/ratings/1", "POST"),
            Some("any-post")
        );
        assert_eq!(
            assign(&rules, "BookInfo.example:8080", "/productpage", "GET"),
            Some("product")
        );
        assert_eq!(assign(&rules, "other.example", "/productpage", "GET"), None);
    }

    #[test]
    fn needs_lists_only_the_headers_rules_use() {
        let rules = vec![
            rule("a", None, Some("/x"), None),
            rule("b", None, None, Some("GET")),
        ];
        assert_eq!(
            needs(&rules),
            RuleNeeds {
                host: false,
                path: true,
                method: true
            }
        );
        assert_eq!(needs(&[]), RuleNeeds::default());
    }

    #[test]
    fn ipv6_host_without_port_is_not_cut() {
        let r = rule("a", Some("[::1]"), None, None);
        assert!(r.matches("[::1]:80", "/", "GET"));
    }
}
