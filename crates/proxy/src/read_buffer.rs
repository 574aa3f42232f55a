//! Read buffers of the lean HTTP/1.1 server and client.

use bytes::BytesMut;

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
