//! The cluster bus's inbox (`[kafka.cluster]` `node_topic`): this node is
//! its only reader, so it is assigned every partition of its topic instead
//! of joining a consumer group, and the group (`tether-<node>-inbox`) only
//! keeps its committed offsets.
//!
//! A group's coordinator hands the partitions over only once it gave up on
//! the members it knew: after a kill -9 and restart, the node's earlier
//! self; after a broker pause longer than the session timeout, every
//! member. The fault harness saw tansu keep a restarted node, and after a
//! 6 s pause every node, waiting for the rest of the run, reading nothing
//! while other nodes' publishers were acknowledged. An assignment needs no
//! coordinator: the node reads as soon as the broker answers, once the
//! sessions of its earlier life are adopted (`bridge::adoption`).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{info, warn};

use super::offers::run;
use super::offsets::{Offsets, OnGap};
use super::{Ctx, SourceConsumer};
use crate::logging::Throttle;

/// How long one metadata request for the topic's partitions, or the
/// request for the group's committed offsets, may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before asking again when the broker did not answer, or the topic
/// does not exist yet (its partitions are read once, at start).
const METADATA_RETRY: Duration = Duration::from_secs(1);
/// How often the inbox looks whether the adoption of the earlier life's
/// sessions is over, before it starts reading.
const ADOPTION_CHECK: Duration = Duration::from_millis(20);

/// Assigns every partition of `topic` (from the offsets the group
/// committed; the earliest the first time), then reads as any source, but
/// reading a gap in a partition's offsets again (`offsets`).
pub(super) async fn read(
    ctx: Arc<Ctx>,
    consumer: SourceConsumer,
    cc: ClientConfig,
    topic: String,
    stopped: watch::Receiver<bool>,
) {
    let resume = loop {
        if *stopped.borrow() {
            return;
        }
        let (cc, t) = (cc.clone(), topic.clone());
        match tokio::task::spawn_blocking(move || resume_at(&cc, &t)).await {
            Ok(Ok(at)) if !at.is_empty() => break at,
            outcome => {
                static REPEATS: Throttle = Throttle::new();
                if let Some(held_back) = REPEATS.admit() {
                    let why = match outcome {
                        Ok(Ok(_)) => "the topic does not exist (create it)".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    warn!(
                        held_back,
                        topic, "Kafka cluster inbox: cannot read its partitions yet: {why}"
                    );
                }
                tokio::time::sleep(METADATA_RETRY).await;
            }
        }
    };
    // A copy for a session this node is adopting must find it installed
    // (`bridge::adoption`): the inbox waits, bounded by the gate's deadline.
    if let Some(bridge) = &ctx.bridge {
        while !bridge.adoption.open() {
            if *stopped.borrow() {
                return;
            }
            tokio::time::sleep(ADOPTION_CHECK).await;
        }
    }
    let mut tpl = TopicPartitionList::new();
    let mut offsets = Offsets::new(OnGap::ReadAgain);
    for (p, at) in resume.iter().enumerate() {
        let p = p as i32;
        // Where the group left off, so that a gap at the first record is
        // noticed (tansu serves a fetch from inside a batch from the next
        // batch); the earliest (`auto.offset.reset`) when it never did.
        let at = match at {
            Offset::Offset(n) => {
                offsets.expect(&topic, p, *n);
                Offset::Offset(*n)
            }
            _ => Offset::Stored,
        };
        if let Err(e) = tpl.add_partition_offset(&topic, p, at) {
            warn!(topic, "Kafka cluster inbox: partition {p}: {e}");
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        warn!(topic, "Kafka cluster inbox: cannot read it: {e}");
        return;
    }
    info!(
        topic,
        partitions = resume.len(),
        "Kafka cluster inbox: reading"
    );
    run(ctx, consumer, offsets, stopped).await;
}

/// Where the inbox resumes: per partition of `topic`, the offset the group
/// committed (`Offset::Invalid` where it never did). Asked with a consumer
/// of its own (blocking: run off the consuming thread's runtime); empty
/// while the topic does not exist.
fn resume_at(cc: &ClientConfig, topic: &str) -> KafkaResult<Vec<Offset>> {
    let c: BaseConsumer = cc.create()?;
    let md = c.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, METADATA_TIMEOUT)?;
    Ok((0..partitions)
        .map(|p| {
            committed
                .find_partition(topic, p)
                .map_or(Offset::Invalid, |e| e.offset())
        })
        .collect())
}
