//! Read and write buffers of the lean HTTP/1.1 server and client.

use std::cell::RefCell;

use bytes::BytesMut;

use crate::spares;

/// Spare write buffers kept per thread (as `crate::header_maps` keeps header maps).
const SPARE_WRITE_BUFFERS: usize = 16;
/// Write buffers that grew past this (a large body gathered) are freed, not kept.
const LARGEST_WRITE_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE_WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer to gather a head (and a small body) in before it is written.
///
/// Taken per write and given back after it rather than kept per connection (see
/// `crate::spares`).
pub(crate) fn take_write_buffer() -> Vec<u8> {
    spares::take(&SPARE_WRITE).unwrap_or_default()
}

/// Give back a buffer from [`take_write_buffer`] once what it gathered is written.
pub(crate) fn give_back_write_buffer(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > LARGEST_WRITE_KEPT {
        return;
    }
    buffer.clear();
    spares::give_back(&SPARE_WRITE, buffer, SPARE_WRITE_BUFFERS);
}

/// Makes room in `buf` for the next read: at least 1 KiB, growing by `chunk`.
///
/// An emptied buffer starts again at the front of its allocation once nothing split off it
/// is alive. Heads and bodies are split off the buffer, so otherwise each request's bytes
/// land past the last one's and a connection walks its reads through the whole allocation:
/// with 64 connections, a megabyte of cache lines each met cold, by the kernel's copy and
/// by the parser (docs/benchmarks.md, "A simulated cache").
pub(crate) fn make_room(buf: &mut BytesMut, chunk: usize) {
    if buf.is_empty() {
        // Changes nothing while a part split off the buffer is still alive.
        let _ = buf.try_reclaim(chunk);
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 8 * 1024;

    #[test]
    fn an_emptied_buffer_reads_into_the_front_of_its_allocation_again() {
        let mut buf = BytesMut::new();
        make_room(&mut buf, CHUNK);
        let front = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();

        // The head is still alive (the request is being served): the next read goes behind it.
        make_room(&mut buf, CHUNK);
        assert_ne!(buf.as_ptr(), front);
        assert_eq!(&head[..], b"GET / HTTP/1.1\r\n\r\n");

        drop(head);
        make_room(&mut buf, CHUNK);
        assert_eq!(buf.as_ptr(), front);
        assert!(buf.capacity() >= CHUNK);
    }

    #[test]
    fn the_last_write_buffer_given_back_is_the_next_taken_and_comes_back_empty() {
        SPARE_WRITE.with_borrow_mut(Vec::clear);
        let mut first = take_write_buffer();
        first.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let mut second = take_write_buffer();
        second.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let second_at = second.as_ptr();
        give_back_write_buffer(first);
        give_back_write_buffer(second);
        let again = take_write_buffer();
        assert_eq!(again.as_ptr(), second_at);
        assert!(again.is_empty());
        assert!(again.capacity() > 0);
    }

    #[test]
    fn large_and_surplus_write_buffers_are_freed() {
        SPARE_WRITE.with_borrow_mut(Vec::clear);
        give_back_write_buffer(Vec::with_capacity(LARGEST_WRITE_KEPT + 1));
        give_back_write_buffer(Vec::new());
        assert_eq!(SPARE_WRITE.with_borrow(Vec::len), 0);
        for _ in 0..SPARE_WRITE_BUFFERS + 4 {
            give_back_write_buffer(Vec::with_capacity(64));
        }
        assert_eq!(SPARE_WRITE.with_borrow(Vec::len), SPARE_WRITE_BUFFERS);
    }

    #[test]
    fn unread_bytes_stay_where_they_are() {
        let mut buf = BytesMut::new();
        make_room(&mut buf, CHUNK);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nGET /next");
        drop(buf.split_to(18));
        let pipelined = buf.as_ptr();
        make_room(&mut buf, CHUNK);
        assert_eq!(buf.as_ptr(), pipelined);
        assert_eq!(&buf[..], b"GET /next");
    }
}
