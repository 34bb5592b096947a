//! The POST actions of an exchange: each becomes an MQTT packet written
//! into the session's pipe, and, for those the session acknowledges
//! (SUBSCRIBE, UNSUBSCRIBE, PUBLISH at QoS 1), the request waits for that
//! acknowledgement and answers with its reason codes.

use std::rc::Rc;

use super::{Action, Deadline, Exchange, State, Step, REPLY_TIMEOUT};
use crate::codec::{reason, Packet, Properties, Publish, QoS, SubOptions, Subscribe, Unsubscribe};
use crate::net::fallback::json::{AckBody, PublishBody, SubscribeBody, UnsubscribeBody};
use crate::net::fallback::pipe::Pipe;
use crate::net::fallback::request::Request;

impl Exchange {
    /// `POST …/ack`: `{"id":..}`, or `?id=`.
    pub(super) fn ack(&mut self, pipe: &Pipe, req: &Request) -> Step {
        let id = match req.param("id") {
            Some(id) => id.to_string(),
            None => match self.parse_body::<AckBody>("ack", &req.body) {
                Some(b) => b.id,
                None => return Step::Again,
            },
        };
        let n = pipe.ack(&id);
        self.ok(200, &format!("{{\"acked\":{n}}}"));
        Step::Again
    }

    pub(super) fn subscribe(&mut self, pipe: Rc<Pipe>, body: &[u8]) -> Step {
        let Some(filters) = self.parse_body::<SubscribeBody>("subscribe", body) else {
            return Step::Again;
        };
        let filters = filters.into_filters();
        if filters.is_empty() || filters.iter().any(|f| !valid_topic(&f.topic, true)) {
            self.refuse(
                400,
                "give at least one topic filter, non-empty, without NUL",
            );
            return Step::Again;
        }
        let pkid = pipe.reserve_pkid();
        let filters = filters
            .into_iter()
            .map(|f| {
                let qos = if f.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                (f.topic, SubOptions::qos(qos))
            })
            .collect();
        pipe.send(&Packet::Subscribe(Subscribe {
            pkid,
            filters,
            properties: Properties::default(),
        }));
        self.wait_reply(pipe, pkid, Action::Subscribe)
    }

    pub(super) fn unsubscribe(&mut self, pipe: Rc<Pipe>, body: &[u8]) -> Step {
        let Some(filters) = self.parse_body::<UnsubscribeBody>("unsubscribe", body) else {
            return Step::Again;
        };
        let filters = filters.into_filters();
        if filters.is_empty() || filters.iter().any(|f| !valid_topic(f, true)) {
            self.refuse(
                400,
                "give at least one topic filter, non-empty, without NUL",
            );
            return Step::Again;
        }
        let pkid = pipe.reserve_pkid();
        pipe.send(&Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters,
            properties: Properties::default(),
        }));
        self.wait_reply(pipe, pkid, Action::Unsubscribe)
    }

    pub(super) fn publish(&mut self, pipe: Rc<Pipe>, body: &[u8]) -> Step {
        let Some(p) = self.parse_body::<PublishBody>("publish", body) else {
            return Step::Again;
        };
        let payload = match p.payload() {
            Ok(b) => b,
            Err(e) => {
                self.refuse(400, &e);
                return Step::Again;
            }
        };
        if !valid_topic(&p.topic, false) {
            self.refuse(400, "topic must be non-empty, without wildcards or NUL");
            return Step::Again;
        }
        if p.qos > 1 {
            self.refuse(400, "qos must be 0 or 1");
            return Step::Again;
        }
        let pkid = if p.qos == 1 { pipe.reserve_pkid() } else { 0 };
        pipe.send(&Packet::Publish(Publish {
            dup: false,
            qos: if p.qos == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            retain: p.retain,
            topic: p.topic,
            pkid,
            properties: Properties::default(),
            payload: payload.into(),
        }));
        if pkid == 0 {
            // At most once: handed to the session, nothing comes back.
            self.ok(202, "{\"qos\":0}");
            return Step::Again;
        }
        self.wait_reply(pipe, pkid, Action::Publish)
    }

    /// The JSON body of a `what` action, or `None` after answering 400.
    fn parse_body<T: serde::de::DeserializeOwned>(&mut self, what: &str, body: &[u8]) -> Option<T> {
        match serde_json::from_slice(body) {
            Ok(b) => Some(b),
            Err(e) => {
                self.refuse(400, &format!("{what} body: {e}"));
                None
            }
        }
    }

    fn wait_reply(&mut self, pipe: Rc<Pipe>, pkid: u16, action: Action) -> Step {
        self.timer = Some(Deadline::new(REPLY_TIMEOUT));
        self.state = State::Reply { pipe, pkid, action };
        Step::Again
    }

    /// The session's answer to a POST.
    pub(super) fn answer(&mut self, action: Action, codes: &[u8]) {
        let list = codes
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match action {
            Action::Subscribe | Action::Unsubscribe => {
                let any_ok = codes.iter().any(|&c| c < 0x80);
                let status = if any_ok { 200 } else { 403 };
                self.ok(status, &format!("{{\"reason_codes\":[{list}]}}"));
            }
            Action::Publish => {
                let code = codes.first().copied().unwrap_or(0);
                let status = match code {
                    0x00 | 0x10 => 200,
                    reason::NOT_AUTHORIZED => 403,
                    reason::QUOTA_EXCEEDED => 429,
                    _ => 502,
                };
                self.ok(status, &format!("{{\"reason_code\":{code}}}"));
            }
        }
    }
}

/// A topic (or, with `filter`, a topic filter) the session would not
/// refuse as malformed: it would close the connection on one.
fn valid_topic(t: &str, filter: bool) -> bool {
    !t.is_empty()
        && t.len() <= usize::from(u16::MAX)
        && !t.contains('\0')
        && (filter || !t.contains(['+', '#']))
}
