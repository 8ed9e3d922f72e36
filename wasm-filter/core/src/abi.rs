//! Decoding of the proxy-wasm ABI's serialized maps, kept here so it is
//! tested natively.

/// Iterates the (key, value) pairs of a header map serialized by the host
/// (`proxy_get_header_map_pairs`): a u32 count, then (key length, value
/// length) u32 pairs, then each key and value followed by a NUL byte.
/// Stops at the first inconsistency instead of trusting the lengths.
pub fn parse_pairs(buf: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    let u32_at = move |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0).unwrap_or(0);
    let mut data = 4usize.saturating_add(count.saturating_mul(8));
    (0..count).map_while(move |i| {
        let (kl, vl) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let key = buf.get(data..data.checked_add(kl)?)?;
        let vstart = data.checked_add(kl)?.checked_add(1)?;
        let value = buf.get(vstart..vstart.checked_add(vl)?)?;
        data = vstart.checked_add(vl)?.checked_add(1)?;
        Some((key, value))
    })
}

/// Serializes pairs the way the host does (for tests and fuzzing).
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let pairs = [
            (":path", "/productpage"),
            (":method", "GET"),
            ("x-empty", ""),
        ];
        let buf = serialize_pairs(&pairs);
        let got: Vec<(&[u8], &[u8])> = parse_pairs(&buf).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (&b":path"[..], &b"/productpage"[..]));
        assert_eq!(got[2], (&b"x-empty"[..], &b""[..]));
    }

    #[test]
    fn truncated_or_lying_buffers_stop_without_panicking() {
        let buf = serialize_pairs(&[("a", "b"), ("c", "d")]);
        for cut in 0..buf.len() {
            let _ = parse_pairs(&buf[..cut]).count();
        }
        let mut lying = buf.clone();
        lying[0] = 0xff; // claims 255 pairs
        assert!(parse_pairs(&lying).count() <= 2);
        let mut huge = buf;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_pairs(&huge).count(), 0);
    }
}
