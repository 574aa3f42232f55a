//! The Redis connection a fleet shares (cluster rate limits and quotas, the shared
//! response cache). One multiplexed connection,
//! reconnected by the connection manager; every call has a short deadline, and after a
//! failure Redis is left alone for `retry_after_failure` so an outage costs requests no
//! waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_config::RedisConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is unavailable (recent failure; retrying after a pause)")]
    Paused,
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct RedisLink {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    retry_after_failure: Duration,
    started: Instant,
    /// Nanoseconds since `started` before which Redis is not asked.
    paused_until: AtomicU64,
    failures: AtomicU64,
    /// Identifies the settings, so a reload keeps the connection.
    pub fingerprint: String,
}

impl RedisLink {
    pub fn new(config: &RedisConfig) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(config.url.value.as_str())
            .map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(Arc::new(Self {
            client,
            connection: OnceCell::new(),
            timeout: config.timeout.0,
            retry_after_failure: config.retry_after_failure.0,
            started: Instant::now(),
            paused_until: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            fingerprint: format!(
                "{}|{:?}|{:?}",
                config.url.value, config.timeout.0, config.retry_after_failure.0
            ),
        }))
    }

    /// Failed calls since start (timeouts, errors), for operators and metrics.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Connect in the background so the first request does not pay for it.
    pub fn start(self: &Arc<Self>) {
        let link = self.clone();
        tokio::spawn(async move {
            if let Err(err) = link.connection().await {
                tracing::warn!(error = %err, "cannot connect to Redis yet; cluster limits use their failure mode until it answers");
            }
        });
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .cloned()
    }

    /// The integer at `key` (0 when absent), within the deadline. For reads off the
    /// request path (`explain`): failures are returned, not counted against the link.
    pub async fn get_count(&self, key: &str) -> Result<u64, RedisFailure> {
        let mut command = redis::cmd("GET");
        command.arg(key);
        let count: Option<u64> = within(self.timeout, self.query(&command)).await?;
        Ok(count.unwrap_or(0))
    }

    /// `command` within the deadline, skipped while Redis is paused after a failure (so an
    /// outage costs the request path no waiting); a failure starts a pause.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, RedisFailure> {
        self.guarded(self.query(command)).await
    }

    /// `pipeline` within the deadline, as `call`.
    pub async fn pipeline(&self, pipeline: &redis::Pipeline) -> Result<(), RedisFailure> {
        self.guarded(async {
            let mut connection = self.connection().await?;
            pipeline.query_async::<()>(&mut connection).await
        })
        .await
    }

    /// For operators' actions (purges): a longer deadline, and no pause involved.
    pub async fn admin_call<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, RedisFailure> {
        within(
            self.timeout.max(Duration::from_secs(5)),
            self.query(command),
        )
        .await
    }

    /// Run `script` with `keys` and `args`, as `call`.
    pub async fn run_script(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[i64],
    ) -> Result<Vec<i64>, RedisFailure> {
        self.guarded(async {
            let mut connection = self.connection().await?;
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async::<Vec<i64>>(&mut connection).await
        })
        .await
    }

    /// Messages published on `channel`, on a connection of their own.
    pub async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSubStream, RedisFailure> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub.into_on_message())
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> redis::RedisResult<T> {
        let mut connection = self.connection().await?;
        command.query_async::<T>(&mut connection).await
    }

    /// A call on the request path: refused at once while paused; a failure starts a pause
    /// and is logged (once per pause, not once per request).
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisFailure> {
        let now = self.started.elapsed().as_nanos() as u64;
        if now < self.paused_until.load(Ordering::Relaxed) {
            return Err(RedisFailure::Paused);
        }
        within(self.timeout, call).await.map_err(|failure| {
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            let resume = self.started.elapsed() + self.retry_after_failure;
            self.paused_until
                .store(resume.as_nanos() as u64, Ordering::Relaxed);
            tracing::warn!(error = %failure, failures, pause = ?self.retry_after_failure, "Redis call failed");
            failure
        })
    }
}

/// `call` within `deadline`.
async fn within<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisFailure> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(RedisFailure::Redis(err)),
        Err(_) => Err(RedisFailure::Timeout(deadline)),
    }
}
