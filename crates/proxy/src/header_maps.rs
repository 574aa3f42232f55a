//! What one parsed head leaves for the next: header maps, and a connection's field names.
//!
//! Every proxied request builds two `HeaderMap`s (the request's, parsed from the client,
//! and the response's, parsed from the upstream), each two allocations with its index
//! table initialised, and frees both when the response is written: about a twentieth of the
//! gateway's instructions per request (docs/benchmarks.md). hyper's client keeps one map per
//! connection for the same reason. Here a thread keeps a few cleared maps: the lean server
//! and the lean upstream client take them, and the places where a request's or response's
//! head is done give them back.
//!
//! A peer sends the same field names in the same order head after head; [`FieldNames`]
//! recognises them by comparing bytes instead of validating and looking each one up again.

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};
use http::HeaderMap;

use crate::spares;

/// Spare maps kept per thread: enough for the requests that finish between two that start
/// on a busy connection set, few enough that a burst leaves little behind.
const SPARE_MAPS: usize = 64;
/// Maps that grew past this many fields (a client's oversized head) are freed, not kept.
const LARGEST_KEPT: usize = 96;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `fields` fields.
pub fn take(fields: usize) -> HeaderMap {
    match spares::take(&SPARE) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Give back a map whose fields are no longer needed.
pub fn give_back(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > LARGEST_KEPT {
        return;
    }
    map.clear();
    spares::give_back(&SPARE, map, SPARE_MAPS);
}

/// Field names remembered per position; later ones are parsed every time.
const REMEMBERED_NAMES: usize = 24;
/// The longest spelling remembered: with the name, one 64-byte entry. Longer names (a few
/// CORS fields, custom ones) are parsed every time.
const LONGEST_REMEMBERED: usize = 31;

/// The field names of a connection's last head, by position, as the peer spelled them.
///
/// Each spelling is kept beside its name, so recognising a field reads one entry: with
/// many connections, each connection's names have left the cache by its next head, and a
/// spelling in an allocation of its own would be a second miss.
#[derive(Default)]
pub struct FieldNames {
    seen: Vec<Remembered>,
}

struct Remembered {
    name: HeaderName,
    len: u8,
    spelled: [u8; LONGEST_REMEMBERED],
}

impl FieldNames {
    /// The name of the `position`th field of a head, spelled `raw`.
    pub fn name(&mut self, position: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some(remembered) = self.seen.get(position) {
            if remembered
                .spelled
                .get(..usize::from(remembered.len))
                .is_some_and(|spelled| same_spelling(spelled, raw))
            {
                return Ok(remembered.name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        if let Some(remembered) = Remembered::new(&name, raw) {
            if let Some(slot) = self.seen.get_mut(position) {
                *slot = remembered;
            } else if position == self.seen.len() && position < REMEMBERED_NAMES {
                self.seen.push(remembered);
            }
        }
        Ok(name)
    }
}

impl Remembered {
    /// `name` as spelled `raw`; `None` when the spelling is too long to keep.
    fn new(name: &HeaderName, raw: &[u8]) -> Option<Self> {
        let mut spelled = [0; LONGEST_REMEMBERED];
        spelled.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(Self {
            name: name.clone(),
            len: u8::try_from(raw.len()).ok()?,
            spelled,
        })
    }
}

/// Byte equality for field names, which are short: whole words compared in line, where
/// `==` on slices calls `memcmp`.
fn same_spelling(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_rest, mut b_rest) = (a, b);
    while let (Some((a_word, a_next)), Some((b_word, b_next))) = (
        a_rest.split_first_chunk::<8>(),
        b_rest.split_first_chunk::<8>(),
    ) {
        if a_word != b_word {
            return false;
        }
        (a_rest, b_rest) = (a_next, b_next);
    }
    // Fewer than eight left: the last eight, overlapping words already compared, when
    // there are eight; otherwise byte by byte.
    match (a.split_last_chunk::<8>(), b.split_last_chunk::<8>()) {
        (Some((_, a_last)), Some((_, b_last))) => a_last == b_last,
        _ => a_rest.iter().zip(b_rest).all(|(x, y)| x == y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, HOST};

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_room() {
        let mut map = take(16);
        map.insert(HOST, HeaderValue::from_static("example.com"));
        let room = map.capacity();
        give_back(map);
        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
    }

    #[test]
    fn oversized_maps_and_more_than_the_spares_are_not_kept() {
        SPARE.with_borrow_mut(Vec::clear);
        give_back(HeaderMap::with_capacity(LARGEST_KEPT * 4));
        assert_eq!(SPARE.with_borrow(Vec::len), 0);
        for _ in 0..SPARE_MAPS + 10 {
            give_back(HeaderMap::with_capacity(8));
        }
        assert_eq!(SPARE.with_borrow(Vec::len), SPARE_MAPS);
    }

    #[test]
    fn field_names_are_recognised_as_spelled_and_still_judged() {
        let mut names = FieldNames::default();
        assert_eq!(names.name(0, b"Content-Type").unwrap(), "content-type");
        assert_eq!(names.name(1, b"X-Custom").unwrap(), "x-custom");
        // The same spelling at the same place is the remembered name.
        assert_eq!(names.name(0, b"Content-Type").unwrap(), "content-type");
        // Another one there replaces it, and is validated like any other.
        assert_eq!(names.name(0, b"server").unwrap(), "server");
        assert_eq!(names.name(0, b"Content-Type").unwrap(), "content-type");
        assert!(names.name(1, b"bad name").is_err());
        assert_eq!(names.name(1, b"X-Custom").unwrap(), "x-custom");
        // Positions beyond the next one are parsed without being remembered.
        assert_eq!(names.name(5, b"accept").unwrap(), "accept");
        assert_eq!(names.seen.len(), 2);
    }

    #[test]
    fn long_names_are_judged_every_time_and_leave_the_others_remembered() {
        let mut names = FieldNames::default();
        let long = b"Access-Control-Allow-Credentials";
        assert!(long.len() > LONGEST_REMEMBERED);
        // Parsed the first time, and the second: never remembered.
        assert_eq!(names.name(0, b"Host").unwrap(), "host");
        for _ in 0..2 {
            assert_eq!(
                names.name(1, long).unwrap(),
                "access-control-allow-credentials"
            );
            assert_eq!(names.seen.len(), 1);
        }
        assert!(names.name(1, b"Access-Control-Allow-Credentials:").is_err());
        assert_eq!(names.name(0, b"Host").unwrap(), "host");
        // The longest remembered spelling fills its entry exactly: parsed, then recognised.
        let longest = b"X-Thirty-One-Bytes-Long-Name-Ok";
        assert_eq!(longest.len(), LONGEST_REMEMBERED);
        for _ in 0..2 {
            assert_eq!(
                names.name(1, longest).unwrap(),
                "x-thirty-one-bytes-long-name-ok"
            );
            assert_eq!(names.seen.len(), 2);
        }
        assert_eq!(std::mem::size_of::<Remembered>(), 64);
    }

    #[test]
    fn spellings_compare_equal_only_when_every_byte_does() {
        let cases: [(&[u8], &[u8], bool); 8] = [
            (b"", b"", true),
            (b"Host", b"Host", true),
            (b"Host", b"host", false),
            (b"Content-Type", b"Content-Type", true),
            (b"Content-Type", b"Content-Typf", false),
            (b"Content-Type", b"Dontent-Type", false),
            (b"X-Forwarded-For", b"X-Forwarded-Fox", false),
            (b"Date", b"Dates", false),
        ];
        for (a, b, equal) in cases {
            assert_eq!(same_spelling(a, b), equal, "{a:?} {b:?}");
            assert_eq!(same_spelling(b, a), equal, "{b:?} {a:?}");
        }
        // Every length up to two words, with a difference at every place.
        let long = b"abcdefghijklmnopq";
        for len in 0..=long.len() {
            assert!(same_spelling(&long[..len], &long[..len]));
            for at in 0..len {
                let mut other = long[..len].to_vec();
                other[at] ^= 0x20;
                assert!(!same_spelling(&long[..len], &other), "{len} {at}");
            }
        }
    }
}
