//! Read and write buffers of the lean HTTP/1.1 server and client.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::spares;

/// Spare buffers kept per thread, of each kind (as `crate::header_maps` keeps header maps).
const SPARE_BUFFERS: usize = 16;
/// Buffers that grew past this (a large body gathered) are freed, not kept.
const LARGEST_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE_WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Read from `io` into `buf`; `Ready(Ok(0))` at the end of the stream.
///
/// `buf` holds a buffer only while bytes are coming: one is taken from the thread's spares
/// for the read, and an empty one goes back to them when nothing is there to read yet. So
/// the kernel copies into the buffer the thread last read into, still in the cache, rather
/// than into one the other connections' traffic has pushed out, and an idle connection
/// holds no buffer (as HAProxy's buffers are allocated only while they hold data). Asking
/// an `AsyncRead` with nothing ready leaves the buffer untouched, so no readiness call is
/// needed, and a TLS stream's already decrypted bytes are read as any others.
pub(crate) fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        if let Some(spare) = spares::take(&SPARE_READ) {
            *buf = spare;
        }
    }
    make_room(buf, chunk);
    let polled = pin!(io.read_buf(buf)).poll(cx);
    if polled.is_pending() {
        give_back_read_buffer(buf);
    }
    polled
}

/// Give `buf`'s buffer to the thread's spares if it holds no bytes (a connection going
/// idle); `buf` is left without one.
pub(crate) fn give_back_read_buffer(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT {
        return;
    }
    spares::give_back(&SPARE_READ, std::mem::take(buf), SPARE_BUFFERS);
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
    if buffer.capacity() == 0 || buffer.capacity() > LARGEST_KEPT {
        return;
    }
    buffer.clear();
    spares::give_back(&SPARE_WRITE, buffer, SPARE_BUFFERS);
}

/// Makes room in `buf` for the next read: at least 1 KiB, growing by `chunk`.
///
/// An emptied buffer starts again at the front of its allocation once nothing split off it
/// is alive. Heads and bodies are split off the buffer, so otherwise each request's bytes
/// land past the last one's and a connection walks its reads through the whole allocation:
/// with 64 connections, a megabyte of cache lines each met cold, by the kernel's copy and
/// by the parser (docs/benchmarks.md, "A simulated cache").
fn make_room(buf: &mut BytesMut, chunk: usize) {
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
        give_back_write_buffer(Vec::with_capacity(LARGEST_KEPT + 1));
        give_back_write_buffer(Vec::new());
        assert_eq!(SPARE_WRITE.with_borrow(Vec::len), 0);
        for _ in 0..SPARE_BUFFERS + 4 {
            give_back_write_buffer(Vec::with_capacity(64));
        }
        assert_eq!(SPARE_WRITE.with_borrow(Vec::len), SPARE_BUFFERS);
    }

    #[tokio::test]
    async fn a_buffer_is_held_only_while_bytes_are_coming() {
        use std::task::Waker;
        use tokio::io::AsyncWriteExt;

        SPARE_READ.with_borrow_mut(Vec::clear);
        let mut cx = Context::from_waker(Waker::noop());
        let (idle_client, mut idle_server) = tokio::io::duplex(1024);
        let mut idle = BytesMut::new();
        assert!(poll_fill(&mut idle_server, &mut idle, CHUNK, &mut cx).is_pending());
        assert_eq!(
            idle.capacity(),
            0,
            "a connection with nothing to read holds a buffer"
        );
        let spare_at = SPARE_READ.with_borrow(|spare| spare.last().map(|buffer| buffer.as_ptr()));
        assert!(spare_at.is_some());

        // Another connection with a request in flight reads into that same buffer, and keeps
        // it while part of the request is unread.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut reading = BytesMut::new();
        let read = poll_fill(&mut server, &mut reading, CHUNK, &mut cx);
        assert!(matches!(read, Poll::Ready(Ok(16))), "{read:?}");
        assert_eq!(Some(reading.as_ptr()), spare_at);
        assert!(poll_fill(&mut server, &mut reading, CHUNK, &mut cx).is_pending());
        assert_eq!(&reading[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(SPARE_READ.with_borrow(Vec::len), 0);

        // Once all of it is taken, waiting gives the buffer back.
        drop(reading.split());
        assert!(poll_fill(&mut server, &mut reading, CHUNK, &mut cx).is_pending());
        assert_eq!(reading.capacity(), 0);
        assert_eq!(SPARE_READ.with_borrow(Vec::len), 1);

        // The end of the stream reads as 0.
        drop(idle_client);
        let ended = poll_fill(&mut idle_server, &mut idle, CHUNK, &mut cx);
        assert!(matches!(ended, Poll::Ready(Ok(0))), "{ended:?}");
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
