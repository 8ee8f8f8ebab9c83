//! The RabbitMQ link: one connection, one confirm-mode channel for review publishes, the
//! contract's topology, and recovery. Control plane, except [`Publisher::publish`].
//!
//! Many publishes share the channel concurrently: `basic_publish` takes `&self` and every
//! publish gets its own confirm future, so there is no lock across the await. A supervisor
//! task owns reconnection (capped exponential backoff with jitter) and swaps the live link
//! in an `ArcSwapOption`; the hot path only loads it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Notify;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest frame we offer the broker. lapin keeps a send and a receive buffer of 32
/// frames per connection, zero-filled when the connection opens: at RabbitMQ's default of
/// 128 KiB that is 8 MiB resident per connection, two connections, and again after every
/// reconnect. Review items are a few KiB; larger ones go out in several frames. A
/// `frame_max` in the URL wins.
const FRAME_MAX: u32 = 16 * 1024;

fn io_error(kind: std::io::ErrorKind, message: String) -> lapin::Error {
    lapin::ErrorKind::IOError(Arc::new(std::io::Error::new(kind, message))).into()
}

/// Open a connection (the review path's or the verdict consumer's) named `name` in the
/// broker's UI.
pub async fn open(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(uri(url)?, props).await
}

fn uri(url: &str) -> Result<lapin::uri::AMQPUri, lapin::Error> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| {
        io_error(
            std::io::ErrorKind::InvalidInput,
            format!("invalid AMQP URL: {e}"),
        )
    })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

#[derive(Debug, Clone)]
pub struct AmqpConfig {
    pub url: String,
    pub review_exchange: String,
    pub review_queue: String,
    pub verdict_exchange: String,
    pub confirm_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker could not route the message: {0}")]
    Returned(String),
    #[error("publish failed: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the channel is not in confirm mode")]
    NotConfirmed,
}

struct Link {
    connection: Connection,
    channel: Channel,
    /// Set when a publish timed out or came back unroutable: reconnect and redeclare.
    poisoned: std::sync::atomic::AtomicBool,
}

impl Link {
    fn healthy(&self) -> bool {
        !self.poisoned.load(std::sync::atomic::Ordering::Relaxed)
            && self.connection.status().connected()
            && self.channel.status().connected()
    }
}

pub struct Publisher {
    link: ArcSwapOption<Link>,
    exchange: ShortString,
    confirm_timeout: Duration,
    broken: Notify,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Publisher {
    /// Publish one persistent, mandatory message and wait for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let link = self.link.load_full().ok_or(PublishError::NotConnected)?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into())
            .with_app_id("triage".into())
            .with_timestamp(unix_seconds());
        let publish = async {
            let confirm = link
                .channel
                .basic_publish(
                    self.exchange.clone(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    payload,
                    properties,
                )
                .await?;
            confirm.await
        };
        let result = match tokio::time::timeout(self.confirm_timeout, publish).await {
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
            Ok(Err(e)) => Err(PublishError::Broker(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            // With `mandatory`, an unroutable message is acked *and* returned: a failure.
            Ok(Ok(Confirmation::Ack(Some(ret)))) => Err(PublishError::Returned(format!(
                "{} {}",
                ret.reply_code, ret.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::NotConfirmed),
        };
        // A blackholed broker answers nothing for a long time: after a confirm timeout,
        // drop the link so the next holds go to the spool at once instead of each waiting.
        // An unroutable message means our topology is gone: reconnect and declare it again.
        if matches!(
            result,
            Err(PublishError::Timeout(_) | PublishError::Returned(_))
        ) {
            link.poisoned
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.link
                .compare_and_swap(&Some(link.clone()), None::<Arc<Link>>);
        }
        if result.is_err() && !link.healthy() {
            self.broken.notify_one();
        }
        result
    }

    pub fn is_connected(&self) -> bool {
        self.link.load().as_ref().is_some_and(|l| l.healthy())
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Create the publisher and start its supervisor, which connects in the background.
pub fn start(config: AmqpConfig) -> Arc<Publisher> {
    let publisher = Arc::new(Publisher {
        link: ArcSwapOption::empty(),
        exchange: config.review_exchange.as_str().into(),
        confirm_timeout: config.confirm_timeout,
        broken: Notify::new(),
    });
    tokio::spawn(supervise(publisher.clone(), config));
    publisher
}

/// How often a connected review path checks its link without being told of a problem.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

async fn supervise(publisher: Arc<Publisher>, config: AmqpConfig) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(10);
    let mut backoff = MIN_BACKOFF;
    loop {
        match connect(&config).await {
            Ok(link) => {
                tracing::info!(exchange = %config.review_exchange, queue = %config.review_queue, "review path connected to the broker");
                backoff = MIN_BACKOFF;
                let link = Arc::new(link);
                publisher.link.store(Some(link.clone()));
                // lapin marks the connection failed before it reports the error, so each
                // event is a reason to look again. A failed publish wakes us too, and a
                // slow look covers whatever neither reports (a closed channel).
                let mut events = link.connection.events_listener();
                let mut listening = true;
                while link.healthy() {
                    tokio::select! {
                        () = publisher.broken.notified() => {}
                        event = events.next(), if listening => listening = event.is_some(),
                        () = tokio::time::sleep(HEALTH_CHECK) => {}
                    }
                }
                publisher.link.store(None);
                tracing::warn!("review path lost its broker connection; reconnecting");
                let _ = link.connection.close(200, "reconnecting".into()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect the review path to the broker");
            }
        }
        let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(config: &AmqpConfig) -> Result<Link, lapin::Error> {
    // A blackholed broker never answers the handshake: bound it ourselves.
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, open(&config.url, "triage"))
        .await
        .map_err(|_| io_error(std::io::ErrorKind::TimedOut, "connect timed out".into()))??;
    let channel = connection.create_channel().await?;
    let channel = match declare_topology(&channel, config).await {
        Ok(()) => channel,
        Err(e) => {
            // An operator's queue with other arguments (a length limit, say) closes the
            // channel with PRECONDITION_FAILED: keep theirs, check it exists, use it.
            tracing::warn!(error = %e, queue = %config.review_queue, "review queue exists with other arguments; using it as it is");
            let channel = connection.create_channel().await?;
            declare_exchanges(&channel, config).await?;
            channel
                .queue_declare(
                    config.review_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
        }
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(Link {
        connection,
        channel,
        poisoned: std::sync::atomic::AtomicBool::new(false),
    })
}

async fn declare_exchanges(channel: &Channel, config: &AmqpConfig) -> Result<(), lapin::Error> {
    for name in [&config.review_exchange, &config.verdict_exchange] {
        declare_exchange(channel, name, ExchangeKind::Topic).await?;
    }
    Ok(())
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, durable, FieldTable::default())
        .await
}

/// The contract's review topology, declared idempotently: a quorum queue that rejects
/// publishes when full (never drops the oldest) and dead-letters at least once.
async fn declare_topology(channel: &Channel, config: &AmqpConfig) -> Result<(), lapin::Error> {
    declare_exchange(channel, &config.verdict_exchange, ExchangeKind::Topic).await?;
    let extra = [
        ("x-overflow", "reject-publish"),
        ("x-dead-letter-strategy", "at-least-once"),
    ];
    declare_queue(
        channel,
        &config.review_exchange,
        &config.review_queue,
        &extra,
    )
    .await
}

/// A durable topic exchange and a durable quorum queue bound to it with `#`, dead-lettering
/// through the fanout exchange `<exchange>.dead` into the quorum queue `<queue>.dead`.
/// Used for the review queue and the verdict queue.
pub async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    extra: &[(&str, &str)],
) -> Result<(), lapin::Error> {
    let dead_exchange = format!("{exchange}.dead");
    let dead_queue = format!("{queue}.dead");
    declare_exchange(channel, exchange, ExchangeKind::Topic).await?;
    declare_exchange(channel, &dead_exchange, ExchangeKind::Fanout).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), long_string("quorum"));
    let mut args = quorum.clone();
    args.insert("x-dead-letter-exchange".into(), long_string(&dead_exchange));
    for (k, v) in extra {
        args.insert((*k).into(), long_string(v));
    }
    for (name, args, bound_to) in [
        (&dead_queue, quorum, &dead_exchange),
        (&queue.to_owned(), args, &exchange.to_owned()),
    ] {
        channel
            .queue_declare(name.as_str().into(), durable, args)
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                bound_to.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_defaults_small_and_the_url_wins() {
        let frame_max = |url: &str| uri(url).map(|u| u.query.frame_max).ok().flatten();
        assert_eq!(
            frame_max(crate::settings::DEFAULT_AMQP_URL),
            Some(FRAME_MAX)
        );
        assert_eq!(
            frame_max("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072"),
            Some(131_072)
        );
        let Err(e) = uri("amqp://host:notaport") else {
            panic!("a bad URL is an error");
        };
        assert!(e.to_string().contains("invalid AMQP URL"), "{e}");
    }
}
