//! What one confirmed publish costs through lapin 4 (triage's client) and through amqprs 2,
//! when publishes come alone: at a fixed rate, each awaited before the next, as a held
//! output at a model server's pace is. One current-thread runtime, as triage runs with one
//! worker; the local broker; each client on an exchange and queue of its own, deleted after.
//! Prints CPU (utime + stime from /proc) and context switches (all threads) per publish.
//!
//! ```sh
//! taskset -c 1 cargo run --release -- RATE COUNT [lapin|amqprs]...
//! ```
//!
//! lapin runs its connection on a thread of its own (`lapin-io-loop`): a frame goes out
//! through it and the confirm comes back through it. amqprs runs its reader and writer as
//! tasks on the caller's runtime.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=16384";
const PAYLOAD: usize = 1024;
const WARM_UP: usize = 200;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(rate), Some(count)) = (args.first(), args.get(1)) else {
        return Err("usage: amqp-clients RATE COUNT [lapin|amqprs]...".into());
    };
    let (rate, count): (f64, usize) = (rate.parse()?, count.parse()?);
    let clients: Vec<&str> = match args.get(2..) {
        Some(rest) if !rest.is_empty() => rest.iter().map(String::as_str).collect(),
        _ => vec!["lapin", "amqprs", "lapin", "amqprs"],
    };
    for (i, client) in clients.into_iter().enumerate() {
        // A fresh runtime per measurement, as a fresh process would have.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let names = format!("amqp-clients.{}.{i}", std::process::id());
        let (cpu_us, switches) = match client {
            "lapin" => rt.block_on(lapin_client(rate, count, &names))?,
            "amqprs" => rt.block_on(amqprs_client(rate, count, &names))?,
            other => return Err(format!("unknown client {other}").into()),
        };
        println!(
            "{client:<6} {rate} publishes/s, {count}: {cpu_us:6.1} µs CPU and {switches:5.2} \
             context switches per publish"
        );
    }
    Ok(())
}

/// Publish `count` times at `rate` a second after a warm-up, each awaited alone; CPU µs and
/// context switches per publish.
async fn paced<F, Fut>(rate: f64, count: usize, mut publish: F) -> Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..WARM_UP {
        publish().await?;
    }
    let (cpu0, switches0) = (cpu_ticks()?, switches()?);
    let t0 = Instant::now();
    for i in 0..count {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        publish().await?;
    }
    let (cpu1, switches1) = (cpu_ticks()?, switches()?);
    let n = count.max(1) as f64;
    Ok((
        (cpu1 - cpu0) as f64 * 1e6 / clk_tck() / n,
        (switches1 - switches0) as f64 / n,
    ))
}

async fn lapin_client(rate: f64, count: usize, names: &str) -> Result<(f64, f64)> {
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let auto_delete = true;
    ch.exchange_declare(
        names.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        names.into(),
        QueueDeclareOptions {
            auto_delete,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        names.into(),
        names.into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let payload = vec![b'x'; PAYLOAD];
    let result = paced(rate, count, || async {
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let properties = BasicProperties::default().with_delivery_mode(2);
        let confirm = ch
            .basic_publish(names.into(), "k".into(), options, &payload, properties)
            .await?
            .await?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err("nacked".into())
        }
    })
    .await;
    ch.queue_delete(names.into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(names.into(), ExchangeDeleteOptions::default())
        .await?;
    conn.close(0, "done".into()).await?;
    result
}

/// Delivery tag → who waits for its confirm. amqprs reports confirms through a channel
/// callback; the tags count publishes from 1 after `confirm.select`.
type Waiters = Arc<tokio::sync::Mutex<BTreeMap<u64, tokio::sync::oneshot::Sender<bool>>>>;

struct Confirms(Waiters);

impl Confirms {
    async fn settle(&self, tag: u64, multiple: bool, acked: bool) {
        let mut waiters = self.0.lock().await;
        let tags: Vec<u64> = if multiple {
            waiters.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for t in tags {
            if let Some(tx) = waiters.remove(&t) {
                let _ = tx.send(acked);
            }
        }
    }
}

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _: &amqprs::channel::Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &amqprs::channel::Channel, ack: amqprs::Ack) {
        // (sic: amqprs 2 spells it `mutiple`)
        self.settle(ack.delivery_tag(), ack.mutiple(), true).await;
    }
    async fn publish_nack(&mut self, _: &amqprs::channel::Channel, nack: amqprs::Nack) {
        self.settle(nack.delivery_tag(), nack.multiple(), false)
            .await;
    }
    async fn publish_return(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
    }
}

async fn amqprs_client(rate: f64, count: usize, names: &str) -> Result<(f64, f64)> {
    use amqprs::channel::{
        BasicPublishArguments, ConfirmSelectArguments, ExchangeDeclareArguments,
        ExchangeDeleteArguments, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
    };
    use amqprs::connection::{Connection, OpenConnectionArguments};

    let conn = Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        5672,
        "guest",
        "guest",
    ))
    .await?;
    let ch = conn.open_channel(None).await?;
    let waiters: Waiters = Arc::default();
    ch.register_callback(Confirms(waiters.clone())).await?;
    ch.confirm_select(ConfirmSelectArguments::default()).await?;
    ch.exchange_declare(
        ExchangeDeclareArguments::new(names, "direct")
            .auto_delete(true)
            .finish(),
    )
    .await?;
    ch.queue_declare(QueueDeclareArguments::new(names).auto_delete(true).finish())
        .await?;
    ch.queue_bind(QueueBindArguments::new(names, names, "k"))
        .await?;
    let payload = vec![b'x'; PAYLOAD];
    let mut tag = 0u64;
    let result = paced(rate, count, || {
        tag += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ch, payload, waiters) = (&ch, payload.clone(), &waiters);
        async move {
            waiters.lock().await.insert(tag, tx);
            let mut properties = amqprs::BasicProperties::default();
            properties.with_delivery_mode(2);
            let args = BasicPublishArguments::new(names, "k")
                .mandatory(true)
                .finish();
            ch.basic_publish(properties, payload, args).await?;
            if rx.await? {
                Ok(())
            } else {
                Err("nacked".into())
            }
        }
    })
    .await;
    ch.queue_delete(QueueDeleteArguments::new(names)).await?;
    ch.exchange_delete(ExchangeDeleteArguments::new(names))
        .await?;
    conn.close().await?;
    result
}

fn cpu_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |i: usize| -> Result<u64> { Ok(fields.get(i).ok_or("short /proc/self/stat")?.parse()?) };
    Ok(field(11)? + field(12)?)
}

/// USER_HZ, the unit of /proc's CPU times: 100 on Linux whatever the kernel's own HZ.
fn clk_tck() -> f64 {
    100.0
}

fn switches() -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches")
                || line.starts_with("nonvoluntary_ctxt_switches")
            {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .ok_or("bad status line")?
                    .parse::<u64>()?;
            }
        }
    }
    Ok(total)
}
