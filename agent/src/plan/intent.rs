//! Intents: a sentence an operator types, read deterministically (no model)
//! into the objective or bound it means. Three kinds are understood:
//!
//! - an objective: "keep checkout p99 under 300 ms", "product-page p95
//!   below 0.2 s" (a chain, a percentile, a latency with its unit);
//! - a priority: "ratings-api is low priority", "make checkout high priority";
//! - a resources bound: "give reviews at most 2 CPUs", "reviews at least
//!   0.5 cores", "give ratings at most 512 MiB" (a service).
//!
//! A name that is neither a known chain nor service is refused with the
//! nearest known one; a sentence that could mean two kinds, or none, or a
//! number without its unit, is refused saying what is missing.

use meshtune_filter_core::control::Priority;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "intent", rename_all = "snake_case")]
pub enum Intent {
    Objective {
        chain: String,
        percentile: f64,
        slo_ms: f64,
    },
    Priority {
        chain: String,
        priority: Priority,
    },
    Resources {
        service: String,
        /// `max_cpu`, `min_cpu` (cores), `max_memory`, `min_memory` (MiB).
        field: &'static str,
        value: f64,
    },
}

impl Intent {
    /// The chain an objective or a priority is about (`None` for a
    /// service's resources bound).
    pub fn chain(&self) -> Option<&str> {
        match self {
            Intent::Objective { chain, .. } | Intent::Priority { chain, .. } => Some(chain),
            Intent::Resources { .. } => None,
        }
    }
}

/// Levenshtein distance (names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggest(name: &str, known: &[String]) -> String {
    known
        .iter()
        .map(|k| (distance(name, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!("; did you mean '{k}'?"))
        .unwrap_or_else(|| format!(" (known: {})", known.join(", ")))
}

const WORDS: &[&str] = &[
    "keep",
    "make",
    "hold",
    "set",
    "give",
    "let",
    "the",
    "chain",
    "service",
    "is",
    "be",
    "a",
    "an",
    "to",
    "under",
    "below",
    "within",
    "at",
    "most",
    "least",
    "max",
    "min",
    "maximum",
    "minimum",
    "no",
    "more",
    "less",
    "than",
    "up",
    "priority",
    "low",
    "high",
    "normal",
    "latency",
    "of",
    "for",
    "its",
    "with",
    "cpu",
    "cpus",
    "core",
    "cores",
    "memory",
    "ram",
    "mib",
    "mi",
    "gib",
    "gi",
    "mb",
    "gb",
    "ms",
    "s",
    "sec",
    "secs",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
    "<",
    "<=",
    "please",
    "should",
    "stay",
    "p",
    "m",
];

fn is_number(t: &str) -> Option<f64> {
    t.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// `p99` → 99, `p99.9` → 99.9.
fn percentile(t: &str) -> Option<f64> {
    t.strip_prefix('p')
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|p| *p > 0.0 && *p < 100.0)
}

/// Splits "300ms", "2cpus", "512mib" into number and unit tokens.
fn tokens(sentence: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in sentence
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || c == ',' || c == '"' || c == '\'')
        .filter(|t| !t.is_empty())
    {
        let t = raw.trim_end_matches(['.', '!', '?']);
        let digits = t
            .char_indices()
            .take_while(|(_, c)| c.is_ascii_digit() || *c == '.')
            .last()
            .map(|(i, c)| i + c.len_utf8());
        match digits {
            Some(end) if end < t.len() && is_number(&t[..end]).is_some() => {
                out.push(t[..end].to_owned());
                out.push(t[end..].to_owned());
            }
            _ => out.push(t.to_owned()),
        }
    }
    out
}

/// Writes `intent` into the agent's configuration `text` (YAML): the
/// objective or priority under `chains.NAME` (moved out of DTA-SLO's
/// `slos:` if it was there), the bound under `services.NAME`. Returns the
/// new text and each field's old → new. Comments are not kept.
pub fn apply_to_config(text: &str, intent: &Intent) -> Result<(String, Vec<String>), String> {
    use serde_yaml_ng::Value;
    let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if doc.is_null() {
        doc = Value::Mapping(Default::default());
    }
    let root = doc
        .as_mapping_mut()
        .ok_or("the configuration is not a mapping")?;
    let mut changes = Vec::new();
    // A chain declared in DTA-SLO's `slos:` (seconds) moves to `chains:`.
    let from_slos = |root: &mut serde_yaml_ng::Mapping, chain: &str, changes: &mut Vec<String>| {
        let secs = match root.get_mut(Value::from("slos")) {
            Some(Value::Mapping(slos)) => slos.remove(Value::from(chain)),
            _ => None,
        };
        if let Some(secs) = secs {
            let ms = secs.as_f64().unwrap_or(0.0) * 1000.0;
            set_field(root, changes, "chains", chain, "slo_ms", Value::from(ms));
            changes.push(format!("slos.{chain}: moved to chains.{chain}"));
        }
    };
    match intent {
        Intent::Objective {
            chain,
            percentile,
            slo_ms,
        } => {
            from_slos(root, chain, &mut changes);
            set_field(
                root,
                &mut changes,
                "chains",
                chain,
                "slo_ms",
                Value::from(*slo_ms),
            );
            set_field(
                root,
                &mut changes,
                "chains",
                chain,
                "percentile",
                Value::from(*percentile),
            );
        }
        Intent::Priority { chain, priority } => {
            from_slos(root, chain, &mut changes);
            set_field(
                root,
                &mut changes,
                "chains",
                chain,
                "priority",
                Value::from(priority.as_str()),
            );
        }
        Intent::Resources {
            service,
            field,
            value,
        } => {
            set_field(
                root,
                &mut changes,
                "services",
                service,
                field,
                Value::from(*value),
            );
        }
    }
    let out = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    Ok((out, changes))
}

/// The server-side apply body that writes `intent` into the ChainSLO
/// `live` (as the API server returned it): only the fields the intent names,
/// with `spec.chain` (the same value, so sharing it conflicts with no one)
/// and the object's identity. Returns the body and each field's old → new.
/// A resources bound is not a ChainSLO field: an error says where it goes.
pub fn chainslo_apply(
    live: &serde_json::Value,
    intent: &Intent,
) -> Result<(serde_json::Value, Vec<String>), String> {
    use serde_json::{json, Value};
    if let Intent::Resources { service, .. } = intent {
        return Err(format!(
            "a resources bound for {service} is not part of a ChainSLO: it goes into the agent's configuration (run without --chainslo-namespace)"
        ));
    }
    let name = live["metadata"]["name"]
        .as_str()
        .ok_or("the ChainSLO has no metadata.name")?;
    let mut spec = json!({"chain": live["spec"]["chain"]});
    let mut changes = Vec::new();
    let mut set = |path: &[&str], v: Value| {
        let old = path.iter().fold(&live["spec"], |o, k| &o[*k]);
        changes.push(format!(
            "ChainSLO {name} spec.{}: {} → {v}",
            path.join("."),
            if old.is_null() {
                "(unset)".to_owned()
            } else {
                old.to_string()
            }
        ));
        let mut at = &mut spec;
        for k in &path[..path.len() - 1] {
            at = &mut at[*k];
        }
        at[path[path.len() - 1]] = v;
    };
    match intent {
        Intent::Objective {
            percentile, slo_ms, ..
        } => {
            set(&["objective", "latencyMs"], json!(slo_ms));
            set(&["objective", "percentile"], json!(percentile));
        }
        Intent::Priority { priority, .. } => set(&["priority"], json!(priority.as_str())),
        Intent::Resources { .. } => {}
    }
    let body = json!({
        "apiVersion": live["apiVersion"],
        "kind": "ChainSLO",
        "metadata": {"name": name, "namespace": live["metadata"]["namespace"]},
        "spec": spec,
    });
    Ok((body, changes))
}

/// Sets `section.name.field` in `root`, noting old → new.
fn set_field(
    root: &mut serde_yaml_ng::Mapping,
    changes: &mut Vec<String>,
    section: &str,
    name: &str,
    field: &str,
    v: serde_yaml_ng::Value,
) {
    use serde_yaml_ng::Value;
    let sec = root
        .entry(Value::from(section))
        .or_insert_with(|| Value::Mapping(Default::default()));
    if sec.is_null() {
        *sec = Value::Mapping(Default::default());
    }
    let entry = sec.as_mapping_mut().map(|m| {
        m.entry(Value::from(name))
            .or_insert_with(|| Value::Mapping(Default::default()))
    });
    if let Some(Value::Mapping(m)) = entry {
        let old = m.insert(Value::from(field), v.clone());
        let show = |x: &Value| {
            serde_yaml_ng::to_string(x)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        changes.push(format!(
            "{section}.{name}.{field}: {} → {}",
            old.as_ref().map_or("(unset)".into(), show),
            show(&v)
        ));
    }
}

/// Reads `sentence` against the known chains and services.
pub fn parse(sentence: &str, chains: &[String], services: &[String]) -> Result<Intent, String> {
    let t = tokens(sentence);
    let has = |w: &str| t.iter().any(|x| x == w);
    let pct = t.iter().find_map(|x| percentile(x));
    let resources_word = t.iter().any(|x| {
        [
            "cpu", "cpus", "core", "cores", "memory", "ram", "mib", "mi", "gib", "gi", "mb", "gb",
        ]
        .contains(&x.as_str())
    });
    let priority_word = has("priority");
    let kinds =
        usize::from(pct.is_some()) + usize::from(resources_word) + usize::from(priority_word);
    if kinds != 1 {
        return Err(format!(
            "cannot tell what to change in {sentence:?}: say one of an objective (\"keep CHAIN p99 under 300 ms\"), a priority (\"CHAIN is low priority\") or a bound (\"give SERVICE at most 2 CPUs\")"
        ));
    }
    // The name: the words that are neither grammar, numbers nor percentiles.
    let names: Vec<&String> = t
        .iter()
        .filter(|x| {
            !WORDS.contains(&x.as_str()) && is_number(x).is_none() && percentile(x).is_none()
        })
        .collect();
    let name = match names.as_slice() {
        [one] => one.as_str(),
        [] => return Err(format!("no chain or service named in {sentence:?}")),
        many => {
            return Err(format!(
                "more than one name in {sentence:?} ({}): say one chain or service",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let chain = |name: &str| -> Result<String, String> {
        if chains.iter().any(|c| c == name) {
            Ok(name.to_owned())
        } else if services.iter().any(|s| s == name) {
            Err(format!(
                "'{name}' is a service, not a chain: objectives and priorities are per chain (chains: {})",
                chains.join(", ")
            ))
        } else {
            Err(format!("no chain '{name}'{}", suggest(name, chains)))
        }
    };
    let number_with_unit = || -> Result<(f64, String), String> {
        let i = t
            .iter()
            .position(|x| is_number(x).is_some())
            .ok_or_else(|| format!("no number in {sentence:?}"))?;
        let v = is_number(&t[i]).unwrap_or(0.0);
        Ok((v, t.get(i + 1).cloned().unwrap_or_default()))
    };
    if let Some(p) = pct {
        let (v, unit) = number_with_unit()?;
        let slo_ms = match unit.as_str() {
            "ms" | "millisecond" | "milliseconds" => v,
            "s" | "sec" | "secs" | "second" | "seconds" => v * 1000.0,
            _ => {
                return Err(format!(
                    "{v} what? give the latency's unit (ms or s) in {sentence:?}"
                ))
            }
        };
        if slo_ms <= 0.0 {
            return Err("the objective must be above 0 ms".into());
        }
        return Ok(Intent::Objective {
            chain: chain(name)?,
            percentile: p,
            slo_ms,
        });
    }
    if priority_word {
        let levels: Vec<Priority> = [
            ("high", Priority::High),
            ("normal", Priority::Normal),
            ("low", Priority::Low),
        ]
        .into_iter()
        .filter(|(w, _)| has(w))
        .map(|(_, p)| p)
        .collect();
        let [priority] = levels.as_slice() else {
            return Err(format!(
                "say one priority (high, normal or low) in {sentence:?}"
            ));
        };
        return Ok(Intent::Priority {
            chain: chain(name)?,
            priority: *priority,
        });
    }
    let service = if services.iter().any(|s| s == name) {
        name.to_owned()
    } else if chains.iter().any(|c| c == name) {
        return Err(format!(
            "'{name}' is a chain, not a service: resources are per service (services: {})",
            services.join(", ")
        ));
    } else {
        return Err(format!("no service '{name}'{}", suggest(name, services)));
    };
    let most =
        has("most") || has("max") || has("maximum") || (has("no") && has("more")) || has("up");
    let least = has("least") || has("min") || has("minimum");
    if most == least {
        return Err(format!("say \"at most\" or \"at least\" in {sentence:?}"));
    }
    let (v, unit) = number_with_unit()?;
    let (kind, value) = match unit.as_str() {
        "cpu" | "cpus" | "core" | "cores" => ("cpu", v),
        "m" => ("cpu", v / 1000.0),
        "mib" | "mi" | "mb" => ("memory", v),
        "gib" | "gi" | "gb" => ("memory", v * 1024.0),
        _ => {
            return Err(format!(
                "{v} what? give the unit (CPUs or cores; MiB or GiB) in {sentence:?}"
            ))
        }
    };
    if value <= 0.0 {
        return Err("the bound must be above 0".into());
    }
    let field = match (kind, most) {
        ("cpu", true) => "max_cpu",
        ("cpu", false) => "min_cpu",
        (_, true) => "max_memory",
        _ => "min_memory",
    };
    Ok(Intent::Resources {
        service,
        field,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> (Vec<String>, Vec<String>) {
        (
            vec![
                "checkout".into(),
                "ratings-api".into(),
                "product-page".into(),
            ],
            vec!["reviews".into(), "ratings".into(), "productpage".into()],
        )
    }

    fn read(s: &str) -> Result<Intent, String> {
        let (c, v) = known();
        parse(s, &c, &v)
    }

    #[test]
    fn the_three_kinds_are_read() {
        assert_eq!(
            read("keep checkout p99 under 300 ms"),
            Ok(Intent::Objective {
                chain: "checkout".into(),
                percentile: 99.0,
                slo_ms: 300.0
            })
        );
        assert_eq!(
            read("Product-page p95 below 0.2s."),
            Ok(Intent::Objective {
                chain: "product-page".into(),
                percentile: 95.0,
                slo_ms: 200.0
            })
        );
        assert_eq!(
            read("ratings-api is low priority"),
            Ok(Intent::Priority {
                chain: "ratings-api".into(),
                priority: Priority::Low
            })
        );
        assert_eq!(
            read("give reviews at most 2 CPUs"),
            Ok(Intent::Resources {
                service: "reviews".into(),
                field: "max_cpu",
                value: 2.0
            })
        );
        assert_eq!(
            read("give ratings at least 1 GiB"),
            Ok(Intent::Resources {
                service: "ratings".into(),
                field: "min_memory",
                value: 1024.0
            })
        );
        assert_eq!(
            read("reviews at least 500m cpu"),
            Ok(Intent::Resources {
                service: "reviews".into(),
                field: "min_cpu",
                value: 0.5
            })
        );
    }

    #[test]
    fn unknown_wrong_kind_and_ambiguous_sentences_are_refused_with_a_way_out() {
        let e = read("keep chekout p99 under 300 ms").unwrap_err();
        assert_eq!(e, "no chain 'chekout'; did you mean 'checkout'?");
        let e = read("keep reviews p99 under 300 ms").unwrap_err();
        assert!(e.starts_with("'reviews' is a service, not a chain"), "{e}");
        let e = read("give checkout at most 2 cpus").unwrap_err();
        assert!(e.starts_with("'checkout' is a chain, not a service"), "{e}");
        let e = read("keep checkout p99 under 300").unwrap_err();
        assert!(e.contains("unit"), "{e}");
        let e = read("keep checkout p99 under 300 ms with 2 cpus").unwrap_err();
        assert!(e.starts_with("cannot tell what to change"), "{e}");
        let e = read("make checkout fast").unwrap_err();
        assert!(e.starts_with("cannot tell what to change"), "{e}");
        let e = read("give reviews 2 cpus").unwrap_err();
        assert!(e.contains("at most"), "{e}");
        let e = read("checkout is low high priority").unwrap_err();
        assert!(e.starts_with("say one priority"), "{e}");
    }

    #[test]
    fn a_chainslo_apply_names_only_the_intents_fields() {
        let live = serde_json::json!({
            "apiVersion": "meshtune.io/v1alpha1", "kind": "ChainSLO",
            "metadata": {"name": "checkout-slo", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"chain": "checkout", "entry": {"pathPrefix": "/checkout"},
                     "objective": {"latencyMs": 250.0, "percentile": 99.0}, "priority": "normal"}});
        let (body, changes) =
            chainslo_apply(&live, &read("keep checkout p95 under 300 ms").unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"apiVersion": "meshtune.io/v1alpha1", "kind": "ChainSLO",
                "metadata": {"name": "checkout-slo", "namespace": "shop"},
                "spec": {"chain": "checkout", "objective": {"latencyMs": 300.0, "percentile": 95.0}}})
        );
        assert_eq!(
            changes,
            vec![
                "ChainSLO checkout-slo spec.objective.latencyMs: 250.0 → 300.0",
                "ChainSLO checkout-slo spec.objective.percentile: 99.0 → 95.0"
            ]
        );
        let (body, changes) =
            chainslo_apply(&live, &read("checkout is high priority").unwrap()).unwrap();
        assert_eq!(
            body["spec"],
            serde_json::json!({"chain": "checkout", "priority": "high"})
        );
        assert_eq!(
            changes,
            vec!["ChainSLO checkout-slo spec.priority: \"normal\" → \"high\""]
        );
        let e = chainslo_apply(&live, &read("give reviews at most 2 CPUs").unwrap()).unwrap_err();
        assert!(e.contains("agent's configuration"), "{e}");
    }
}
