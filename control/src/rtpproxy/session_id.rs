//! How an rtpproxy stream maps to a relay session ID (the ID the gRPC API and the shard router
//! use).
//!
//! rtpproxy identifies a stream by Call-ID, the tag of the dialog side that created it, and the
//! media index. The to-tag is deliberately left out:
//! - the first `U` (the INVITE) usually has no to-tag yet, and the ID must not change when
//!   later commands add it;
//! - the creating tag can arrive as either argument: Kamailio keeps the dialog's From/To order
//!   for an offer in a request and its answer in the reply (`U`, then `L caller_tag
//!   callee_tag`), but swaps them for an offer in a reply and its answer in the ACK (late
//!   offer), and a re-INVITE from the callee sends `U` with the callee's tag first. rtpproxy
//!   resolves this by trying the from-tag, then the to-tag; [`candidates`] gives the IDs in
//!   that order, and `U` creates under the first when neither exists.
//!
//! Readable form: `rtpp:<call-id>:<tag>:<index>`, used when the call-ID and tag are printable
//! ASCII without spaces, the tag has no `:` (so the form splits unambiguously from the right)
//! and the ID fits in 128 bytes even with the largest index. Otherwise the hashed form
//! `rtph:<32 hex digits>:<index>` is used, the hex being FNV-1a 128 of call-ID, a NUL and the
//! tag: deterministic across restarts and nodes. Which form applies never depends on the index,
//! so [`prefix`] matches every media stream of a tag (for `D` without an index).

use super::command::{StreamRef, Tag};

/// Prefix of readable rtpproxy session IDs.
pub const PLAIN_PREFIX: &str = "rtpp:";
/// Prefix of hashed rtpproxy session IDs.
pub const HASHED_PREFIX: &str = "rtph:";

/// Longest session ID the relay accepts (see `validate::MAX_ID_LEN`).
pub const MAX_ID_LEN: usize = 128;

/// Room kept for `:` and the decimal media index (`u32::MAX` has 10 digits).
const INDEX_ROOM: usize = 1 + 10;

/// FNV-1a, 128 bit: fixed and unseeded so IDs are reproducible in logs and across nodes.
pub fn fnv1a_128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut hash = OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A NUL byte between parts: XOR with 0 is a no-op, the multiply remains.
            hash = hash.wrapping_mul(PRIME);
        }
        for &b in *part {
            hash = (hash ^ u128::from(b)).wrapping_mul(PRIME);
        }
    }
    hash
}

fn printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Everything of the ID but the media index, ending in `:`; shared by all streams of a tag.
pub fn prefix(call_id: &str, tag: &str) -> String {
    let readable = printable(call_id)
        && printable(tag)
        && !tag.contains(':')
        && "rtpp:".len() + call_id.len() + 1 + tag.len() + INDEX_ROOM <= MAX_ID_LEN;
    if readable {
        format!("{PLAIN_PREFIX}{call_id}:{tag}:")
    } else {
        let hash = fnv1a_128(&[call_id.as_bytes(), tag.as_bytes()]);
        format!("{HASHED_PREFIX}{hash:032x}:")
    }
}

/// The session ID of the stream created under `tag` in call `call_id`.
pub fn session_id(call_id: &str, tag: &Tag) -> String {
    let mut id = prefix(call_id, &tag.tag);
    id.push_str(&tag.index().to_string());
    id
}

/// IDs to look a stream up by, in rtpproxy's order: from-tag first, then to-tag.
pub fn candidates(stream: &StreamRef) -> Vec<String> {
    let mut ids = vec![session_id(&stream.call_id, &stream.from_tag)];
    if let Some(to) = &stream.to_tag {
        ids.push(session_id(&stream.call_id, to));
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;
    use proptest::prelude::*;

    fn tag(t: &str, media: Option<u32>) -> Tag {
        Tag {
            tag: t.into(),
            media,
        }
    }

    #[test]
    fn readable_ids_for_ordinary_calls() {
        let id = session_id("1-29838@127.0.0.1", &tag("29838E2ETag1", Some(1)));
        assert_eq!(id, "rtpp:1-29838@127.0.0.1:29838E2ETag1:1");
        assert_eq!(
            session_id("c;branch=z9", &tag("t", None)),
            "rtpp:c;branch=z9:t:1"
        );
        assert_eq!(session_id("a:b", &tag("t", Some(2))), "rtpp:a:b:t:2");
    }

    #[test]
    fn lookups_try_from_then_to() {
        let s = StreamRef {
            call_id: "c".into(),
            from_tag: tag("callee", Some(1)),
            to_tag: Some(tag("caller", Some(1))),
        };
        assert_eq!(candidates(&s), ["rtpp:c:callee:1", "rtpp:c:caller:1"]);
    }

    #[test]
    fn long_or_odd_input_is_hashed_deterministically() {
        let long = "x".repeat(200);
        let id = session_id(&long, &tag("t", Some(3)));
        assert!(id.starts_with("rtph:") && id.ends_with(":3") && id.len() == 5 + 32 + 2);
        assert_eq!(id, session_id(&long, &tag("t", Some(3))));
        assert_ne!(prefix("a:b", "c"), prefix("a", "b:c"));
        assert!(prefix("a", "b:c").starts_with("rtph:"));
        assert!(prefix("caf\u{e9}", "t").starts_with("rtph:"));
        assert_ne!(fnv1a_128(&[b"ab", b"c"]), fnv1a_128(&[b"a", b"bc"]));
    }

    #[test]
    fn hashing_starts_exactly_where_the_limit_requires() {
        // 5 ("rtpp:") + call-id + 1 + tag + 11 <= 128.
        let fits = "c".repeat(128 - 5 - 1 - 1 - INDEX_ROOM);
        assert!(prefix(&fits, "t").starts_with("rtpp:"));
        assert!(prefix(&format!("{fits}c"), "t").starts_with("rtph:"));
        let id = session_id(&fits, &tag("t", Some(u32::MAX)));
        assert_eq!(id.len(), MAX_ID_LEN);
    }

    proptest! {
        #[test]
        fn ids_are_always_valid(call_id in "\\PC{0,300}", t in "\\PC{1,100}", media in any::<u32>()) {
            let id = session_id(&call_id, &tag(&t, Some(media.max(1))));
            prop_assert!(validate::session_id(&id).is_ok(), "{id}");
            prop_assert!(id.starts_with(&prefix(&call_id, &t)));
        }
    }
}
