//! Packet types shared by both protocol versions.
//!
//! One enum covers 3.1.1 and 5.0; fields that only exist in 5.0 (reason codes,
//! properties) are simply left at their defaults for 3.1.1 and ignored by the
//! encoder when the peer speaks 3.1.1.

use bytes::Bytes;

use super::Properties;

/// Protocol level negotiated in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3), served with 3.1.1 semantics.
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Version {
    /// Whether it is MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: fire and forget.
    AtMostOnce = 0,
    /// 1: acknowledged (PUBACK), may be duplicated.
    AtLeastOnce = 1,
    /// 2: exactly once (PUBREC, PUBREL, PUBCOMP).
    ExactlyOnce = 2,
}

impl QoS {
    /// The level for its wire value, if valid.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The last-will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: String,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (MQTT 5), e.g. Will Delay Interval.
    pub properties: Properties,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level.
    pub version: Version,
    /// Clean Start (3.1.1: Clean Session).
    pub clean_start: bool,
    /// Keep Alive, seconds (0: none).
    pub keep_alive: u16,
    /// Client Identifier (may be empty).
    pub client_id: String,
    /// The last-will message, if any.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// CONNECT Properties (MQTT 5).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// v5 reason code; for 3.1.1 the encoder maps it to a return code.
    pub code: u8,
    /// CONNACK Properties (MQTT 5).
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: a resend.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name (empty when a topic alias stands for it).
    pub topic: String,
    /// Present exactly when `qos > 0`.
    pub pkid: u16,
    /// PUBLISH Properties (MQTT 5).
    pub properties: Properties,
    /// Application payload.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Packet Identifier.
    pub pkid: u16,
    /// Reason code (MQTT 5; 0 for success).
    pub code: u8,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

impl Ack {
    /// A success ack for `pkid`.
    pub fn new(pkid: u16) -> Ack {
        Ack {
            pkid,
            code: 0,
            properties: Properties::default(),
        }
    }
}

/// Per-filter options of SUBSCRIBE (3.1.1 only uses `qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS requested.
    pub qos: QoS,
    /// No Local: not the subscriber's own publishes (MQTT 5).
    pub no_local: bool,
    /// Retain As Published (MQTT 5).
    pub retain_as_published: bool,
    /// Retain Handling: 0, 1 or 2 (MQTT 5).
    pub retain_handling: u8,
}

impl SubOptions {
    /// Options with only a QoS (the 3.1.1 form).
    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub pkid: u16,
    /// Topic filters and their options, in order.
    pub filters: Vec<(String, SubOptions)>,
    /// SUBSCRIBE Properties (MQTT 5).
    pub properties: Properties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier of the SUBSCRIBE.
    pub pkid: u16,
    /// One granted QoS or failure code per filter.
    pub codes: Vec<u8>,
    /// SUBACK Properties (MQTT 5).
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub pkid: u16,
    /// Topic filters to remove.
    pub filters: Vec<String>,
    /// UNSUBSCRIBE Properties (MQTT 5).
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier of the UNSUBSCRIBE.
    pub pkid: u16,
    /// v5 only; 3.1.1 UNSUBACK carries no payload.
    pub codes: Vec<u8>,
    /// UNSUBACK Properties (MQTT 5).
    pub properties: Properties,
}

/// DISCONNECT and AUTH share one shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasonOnly {
    /// Reason code.
    pub code: u8,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(ReasonOnly),
    /// AUTH.
    Auth(ReasonOnly),
}

/// MQTT 5 reason codes used by the gateway (MQTT 5.0 section 2.4).
pub mod reason {
    /// 0x00: Success.
    pub const SUCCESS: u8 = 0x00;
    /// 0x01: Granted qos 1.
    pub const GRANTED_QOS_1: u8 = 0x01;
    /// 0x02: Granted qos 2.
    pub const GRANTED_QOS_2: u8 = 0x02;
    /// 0x04: Disconnect with will.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// 0x10: No matching subscribers.
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// 0x11: No subscription existed.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// 0x18: Continue authentication.
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    /// 0x19: Re authenticate.
    pub const RE_AUTHENTICATE: u8 = 0x19;
    /// 0x80: Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// 0x81: Malformed packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// 0x82: Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// 0x83: Implementation specific.
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    /// 0x84: Unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// 0x85: Client id not valid.
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// 0x86: Bad username or password.
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    /// 0x87: Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// 0x88: Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// 0x89: Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// 0x8A: Banned.
    pub const BANNED: u8 = 0x8A;
    /// 0x8B: Server shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// 0x8C: Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// 0x8D: Keep alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// 0x8E: Session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// 0x8F: Topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// 0x90: Topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// 0x91: Packet id in use.
    pub const PACKET_ID_IN_USE: u8 = 0x91;
    /// 0x92: Packet id not found.
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    /// 0x93: Receive maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// 0x94: Topic alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// 0x95: Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// 0x96: Message rate too high.
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// 0x97: Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// 0x98: Administrative action.
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    /// 0x99: Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// 0x9A: Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// 0x9B: Qos not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// 0x9C: Use another server.
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    /// 0x9D: Server moved.
    pub const SERVER_MOVED: u8 = 0x9D;
    /// 0x9E: Shared subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// 0x9F: Connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    /// 0xA0: Maximum connect time.
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    /// 0xA1: Subscription ids not supported.
    pub const SUBSCRIPTION_IDS_NOT_SUPPORTED: u8 = 0xA1;
    /// 0xA2: Wildcard subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

    /// Maps a v5 CONNACK reason code to the closest 3.1.1 return code
    /// (MQTT 3.1.1 section 3.2.2.3).
    pub fn connack_v3(code: u8) -> u8 {
        match code {
            SUCCESS => 0,
            UNSUPPORTED_PROTOCOL_VERSION => 1,
            CLIENT_ID_NOT_VALID => 2,
            // A quota (the per-user connection limit) is the server's
            // refusal to serve now, not the client's identity.
            SERVER_UNAVAILABLE | SERVER_BUSY | SERVER_SHUTTING_DOWN | QUOTA_EXCEEDED => 3,
            BAD_USERNAME_OR_PASSWORD => 4,
            _ => 5,
        }
    }
}
