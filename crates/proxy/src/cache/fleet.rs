//! The fleet tier of the response cache (`cache.redis`): entries stored by one gateway are
//! written to Redis, a gateway that misses in memory looks there before going upstream,
//! and a purge deletes from Redis and is published to every gateway's memory.
//!
//! Redis is never waited on longer than the link's deadline, and not at all while the link
//! is paused after a failure: an outage turns fleet hits into local misses, nothing worse.
//! Writes happen off the request path.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatehouse_policy::redis::{RedisFailure, RedisLink};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::{Entry, Purge, Stored};

/// Kept past an entry's last useful moment, so a stale entry with a validator can still be
/// revalidated by another gateway.
const GRACE: Duration = Duration::from_secs(60);
/// How long a `Vary` marker is kept (its variants carry their own lifetimes).
const VARY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Keys asked for per SCAN step during a purge.
const SCAN_BATCH: usize = 1000;

pub struct Fleet {
    link: Arc<RedisLink>,
    prefix: String,
}

impl Fleet {
    pub fn new(link: Arc<RedisLink>, prefix: &str) -> Self {
        Self {
            link,
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn link_fingerprint(&self) -> String {
        self.link.fingerprint.clone()
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }

    /// The channel purges are published on.
    pub fn channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// The entry another gateway stored under `key`, if Redis answers in time.
    pub(super) async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let mut command = redis::cmd("GET");
        command.arg(self.entry_key(key));
        match self.link.call::<Option<Vec<u8>>>(&command).await {
            Ok(Some(bytes)) => decode(&bytes).map(Arc::new),
            Ok(None) | Err(_) => None,
        }
    }

    /// Write `entry` for the fleet, off the request path. Hit-for-pass markers stay local.
    pub(super) fn put(&self, key: &str, entry: &Entry) {
        let Some((bytes, ttl, tags)) = encode(entry) else {
            return;
        };
        let entry_key = self.entry_key(key);
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(&entry_key)
            .arg(bytes)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        for tag in tags {
            let tag_key = self.tag_key(&tag);
            pipeline.cmd("SADD").arg(&tag_key).arg(&entry_key).ignore();
            pipeline
                .cmd("PEXPIRE")
                .arg(&tag_key)
                .arg(ttl_ms)
                .arg("GT")
                .ignore();
            // PEXPIRE GT does not set a first expiry on a key without one.
            pipeline
                .cmd("PEXPIRE")
                .arg(&tag_key)
                .arg(ttl_ms)
                .arg("NX")
                .ignore();
        }
        let link = self.link.clone();
        tokio::spawn(async move {
            // A failure is logged (once per pause) by the link; the entry stays local.
            let _ = link.pipeline(&pipeline).await;
        });
    }

    /// Delete what `purge` selects from Redis and tell every gateway (this one included)
    /// to drop it from memory. Returns the Redis keys deleted.
    pub async fn purge(&self, purge: &Purge) -> Result<usize, RedisFailure> {
        let deleted = match purge {
            Purge::Tag(tag) => {
                let tag_key = self.tag_key(tag);
                let mut members = redis::cmd("SMEMBERS");
                members.arg(&tag_key);
                let keys: Vec<String> = self.link.admin_call(&members).await?;
                let deleted = self.delete(&keys).await?;
                self.delete(&[tag_key]).await?;
                deleted
            }
            Purge::Route(route) => {
                let pattern = format!("{}\n*", glob_escape(route));
                self.scan_delete(&pattern, |_| true).await?
            }
            Purge::Urls(urls) => {
                let mut deleted = 0;
                for (route, url) in urls {
                    let pattern = format!("{}\n{}*", glob_escape(route), glob_escape(url));
                    deleted += self
                        .scan_delete(&pattern, |key| purge.selects_key(key))
                        .await?;
                }
                deleted
            }
            Purge::All | Purge::Prefix { .. } => {
                self.scan_delete("*", |key| purge.selects_key(key)).await?
            }
        };
        let message = serde_json::to_string(purge).unwrap_or_default();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg(message);
        self.link.admin_call::<i64>(&publish).await?;
        Ok(deleted)
    }

    /// Purges published by any gateway of the fleet, as they arrive.
    pub async fn purges(&self) -> Result<redis::aio::PubSubStream, RedisFailure> {
        self.link.subscribe(&self.channel()).await
    }

    /// Delete the entry keys matching `pattern` (after the entry prefix) that `keep`
    /// selects, by cache key.
    async fn scan_delete(
        &self,
        pattern: &str,
        selects: impl Fn(&str) -> bool,
    ) -> Result<usize, RedisFailure> {
        let entries = format!("{}e:", self.prefix);
        let full_pattern = format!("{}{pattern}", glob_escape(&entries));
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&full_pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            let (next, keys): (u64, Vec<String>) = self.link.admin_call(&scan).await?;
            let chosen: Vec<String> = keys
                .into_iter()
                .filter(|k| k.strip_prefix(&entries).is_some_and(&selects))
                .collect();
            deleted += self.delete(&chosen).await?;
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn delete(&self, keys: &[String]) -> Result<usize, RedisFailure> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut del = redis::cmd("DEL");
        for key in keys {
            del.arg(key);
        }
        self.link.admin_call::<usize>(&del).await
    }
}

/// Apply the purges any gateway of the fleet publishes to this gateway's memory, for as
/// long as the process runs. Follows reloads: each message purges the running snapshot's
/// cache, and the subscription is renewed when the cache's Redis changes or fails.
pub async fn follow_purges(store: Arc<crate::ConfigStore>) {
    use futures_util::StreamExt;
    loop {
        let fleet = store.snapshot().response_cache.fleet().cloned();
        let Some(fleet) = fleet else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        match fleet.purges().await {
            Ok(mut messages) => {
                tracing::debug!(channel = %fleet.channel(), "following the fleet's cache purges");
                while let Some(message) = messages.next().await {
                    let purge = message
                        .get_payload::<String>()
                        .ok()
                        .and_then(|text| serde_json::from_str::<Purge>(&text).ok());
                    match purge {
                        Some(purge) => {
                            let purged = store.snapshot().response_cache.purge(&purge);
                            tracing::debug!(?purge, purged, "fleet purge applied");
                        }
                        None => {
                            tracing::warn!("ignored a malformed message on the cache purge channel")
                        }
                    }
                    let current = store.snapshot().response_cache.fleet().cloned();
                    if !current.is_some_and(|c| Arc::ptr_eq(&c, &fleet)) {
                        break; // reloaded: subscribe with the new settings
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot follow the fleet's cache purges; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Escape Redis glob characters so a route name or URL matches itself only.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The bytes of an entry, how long Redis should keep it, and its tags. The format is a
/// line of numbers, a line of tags, the header lines, a blank line and the body: header
/// values cannot contain CR or LF, so no escaping is needed.
fn encode(entry: &Entry) -> Option<(Vec<u8>, Duration, Vec<String>)> {
    match entry {
        Entry::Pass { .. } => None,
        Entry::Vary(names) => {
            let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
            Some((
                format!("V {}", names.join(" ")).into_bytes(),
                VARY_TTL,
                Vec::new(),
            ))
        }
        Entry::Response(stored) => {
            let elapsed = stored.received.elapsed();
            let received = unix_ms().saturating_sub(elapsed.as_millis() as u64);
            let mut bytes = format!(
                "R {} {} {} {} {} {}\r\n{}\r\n",
                stored.status.as_u16(),
                received,
                stored.initial_age.as_millis(),
                stored.fresh_for.as_millis(),
                stored.stale_while_revalidate.as_millis(),
                stored.stale_if_error.as_millis(),
                stored.tags.join(" "),
            )
            .into_bytes();
            for (name, value) in &stored.headers {
                bytes.extend_from_slice(name.as_str().as_bytes());
                bytes.extend_from_slice(b": ");
                bytes.extend_from_slice(value.as_bytes());
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(&stored.body);
            let useful =
                stored.fresh_for + stored.stale_while_revalidate.max(stored.stale_if_error);
            let ttl = useful.saturating_sub(stored.age()) + GRACE;
            Some((bytes, ttl, stored.tags.to_vec()))
        }
    }
}

fn decode(bytes: &[u8]) -> Option<Entry> {
    if let Some(names) = bytes.strip_prefix(b"V ") {
        let names = std::str::from_utf8(names).ok()?;
        let names = names
            .split(' ')
            .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect::<Option<Vec<_>>>()?;
        return Some(Entry::Vary(names));
    }
    let rest = bytes.strip_prefix(b"R ")?;
    let (numbers, rest) = split_line(rest)?;
    let numbers: Vec<u64> = std::str::from_utf8(numbers)
        .ok()?
        .split(' ')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [status, received, initial_age, fresh_for, swr, sie] = numbers[..] else {
        return None;
    };
    let (tags, mut rest) = split_line(rest)?;
    let tags: Box<[String]> = std::str::from_utf8(tags)
        .ok()?
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let mut headers = HeaderMap::new();
    loop {
        let (line, after) = split_line(rest)?;
        rest = after;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|b| *b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].strip_prefix(b" ")?).ok()?;
        headers.append(name, value);
    }
    let body = Bytes::copy_from_slice(rest);
    // Age carries over: the time since another gateway received it counts.
    let since = Duration::from_millis(unix_ms().saturating_sub(received));
    let received = Instant::now()
        .checked_sub(since)
        .unwrap_or_else(Instant::now);
    let weight = super::weigh(body.len(), &tags, &headers);
    Some(Entry::Response(Arc::new(Stored {
        status: StatusCode::from_u16(u16::try_from(status).ok()?).ok()?,
        headers,
        body,
        received,
        initial_age: Duration::from_millis(initial_age),
        fresh_for: Duration::from_millis(fresh_for),
        stale_while_revalidate: Duration::from_millis(swr),
        stale_if_error: Duration::from_millis(sie),
        tags,
        revalidating: std::sync::atomic::AtomicBool::new(false),
        weight,
    })))
}

fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    Some((&bytes[..end], &bytes[end + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b: c"));
        let stored = Stored {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{\"a\":1}\r\n\r\nrest"),
            received: Instant::now(),
            initial_age: Duration::from_secs(3),
            fresh_for: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            tags: vec!["product-1".to_owned(), "list".to_owned()].into(),
            revalidating: std::sync::atomic::AtomicBool::new(false),
            weight: 0,
        };
        let (bytes, ttl, tags) = encode(&Entry::Response(Arc::new(stored))).unwrap();
        assert!(ttl > Duration::from_secs(600) && ttl <= Duration::from_secs(720));
        assert_eq!(tags, ["product-1", "list"]);
        let Some(Entry::Response(back)) = decode(&bytes) else {
            panic!("not a response");
        };
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(&back.body[..], b"{\"a\":1}\r\n\r\nrest");
        let multi: Vec<&[u8]> = back
            .headers
            .get_all("x-multi")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(multi, [&b"a"[..], b"b: c"]);
        assert_eq!(back.fresh_for, Duration::from_secs(60));
        assert_eq!(back.stale_if_error, Duration::from_secs(600));
        assert!(back.age() >= Duration::from_secs(3) && back.age() < Duration::from_secs(5));
        assert_eq!(&*back.tags, ["product-1", "list"]);

        let vary = Entry::Vary(vec![HeaderName::from_static("accept-language")]);
        let (bytes, _, _) = encode(&vary).unwrap();
        assert!(matches!(decode(&bytes), Some(Entry::Vary(names)) if names == ["accept-language"]));
        assert!(decode(b"garbage").is_none());
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
