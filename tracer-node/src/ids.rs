//! Random ids: session ids, OTLP trace and span ids. One generator, the kernel's CSPRNG
//! (`getrandom(2)`), in place of two hand-rolled ones that hashed the clock (and a counter)
//! with std's `RandomState`: that hasher is made for hash tables, not for ids, and a session id
//! is the only handle on a session.

/// A random non-zero `u64`.
pub fn random_u64() -> u64 {
    loop {
        let mut b = [0u8; 8];
        if let Err(e) = getrandom::fill(&mut b) {
            // Only before the kernel's pool is initialised, early at boot: wait for it rather
            // than hand out a predictable id.
            tracing::warn!(error = %e, "getrandom failed; retrying");
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        let v = u64::from_ne_bytes(b);
        if v != 0 {
            return v;
        }
    }
}

/// A random non-zero id below 2^63, so that it survives clients that parse JSON numbers of
/// the decimal string as signed 64-bit integers.
pub fn session_id() -> u64 {
    loop {
        let v = random_u64() >> 1;
        if v != 0 {
            return v;
        }
    }
}

/// A random OTLP trace id (16 bytes, not all zero).
pub fn trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&random_u64().to_be_bytes());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_non_zero_distinct_and_session_ids_fit_63_bits() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| session_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|&i| i != 0 && i < 1 << 63));
        assert_ne!(trace_id(), trace_id());
        assert_ne!(trace_id(), [0u8; 16]);
    }
}
