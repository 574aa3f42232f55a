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
    let spare = SPARE
        .try_with(|spare| {
            spare
                .try_borrow_mut()
                .ok()
                .and_then(|mut spare| spare.pop())
        })
        .ok()
        .flatten();
    match spare {
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
    // A thread being torn down has no spares left to keep: the map is simply freed.
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARE_MAPS {
                spare.push(map);
            }
        }
    });
}

/// Field names remembered per position; later ones are parsed every time.
const REMEMBERED_NAMES: usize = 24;

/// The field names of a connection's last head, by position, as the peer spelled them.
#[derive(Default)]
pub struct FieldNames {
    seen: Vec<(Box<[u8]>, HeaderName)>,
}

impl FieldNames {
    /// The name of the `position`th field of a head, spelled `raw`.
    pub fn name(&mut self, position: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some((spelled, name)) = self.seen.get(position) {
            if **spelled == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        let remembered = (Box::from(raw), name.clone());
        if let Some(slot) = self.seen.get_mut(position) {
            *slot = remembered;
        } else if position == self.seen.len() && position < REMEMBERED_NAMES {
            self.seen.push(remembered);
        }
        Ok(name)
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
}
