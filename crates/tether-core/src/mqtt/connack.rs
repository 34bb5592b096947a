//! Every CONNACK the gateway sends is built here: the acceptance (prepared
//! when the CONNECT is admitted, sent by the core once the session is in
//! place, which only sets Session Present) and every refusal.
//!
//! 3.1.1 clients get the closest 3.1.1 return code for a reason code (the
//! encoder maps it, MQTT 3.1.1 section 3.2.2.3) and no properties.

use crate::codec::{reason, ConnAck, Packet, Properties};
use crate::config::MqttConfig;

/// What the acceptance reports back to an MQTT 5 client.
#[derive(Debug, Default)]
pub struct Granted {
    /// Client id the gateway assigned (the client sent an empty one).
    pub assigned_id: Option<String>,
    /// Keep-alive the gateway imposes instead of the client's.
    pub server_keep_alive: Option<u16>,
    /// Response Information, when asked for and configured.
    pub response_information: Option<String>,
    /// Session expiry granted, when it differs from the one asked for.
    pub session_expiry: Option<u32>,
    /// Enhanced authentication: method and final data.
    pub auth: Option<(String, Option<bytes::Bytes>)>,
}

/// The CONNACK that accepts a CONNECT (Session Present set at activation).
pub fn accepted(m: &MqttConfig, v5: bool, granted: Granted) -> ConnAck {
    let mut props = Properties::default();
    if v5 {
        props.assigned_client_identifier = granted.assigned_id;
        props.server_keep_alive = granted.server_keep_alive;
        props.response_information = granted.response_information;
        if let Some((method, data)) = granted.auth {
            props.authentication_method = Some(method);
            props.authentication_data = data;
        }
        props.receive_maximum = Some(m.receive_maximum);
        props.maximum_packet_size = Some(m.max_packet_size);
        props.topic_alias_maximum = Some(m.topic_alias_maximum);
        if m.max_qos < 2 {
            props.maximum_qos = Some(m.max_qos);
        }
        if !m.retain_available {
            props.retain_available = Some(0);
        }
        if !m.wildcard_subscription_available {
            props.wildcard_subscription_available = Some(0);
        }
        if !m.shared_subscription_available {
            props.shared_subscription_available = Some(0);
        }
        props.session_expiry_interval = granted.session_expiry;
    }
    ConnAck {
        session_present: false,
        code: reason::SUCCESS,
        properties: props,
    }
}

/// Adds the final data of an enhanced-authentication exchange to a
/// prepared acceptance.
pub fn with_auth(connack: &mut ConnAck, method: String, data: Option<bytes::Bytes>) {
    connack.properties.authentication_method = Some(method);
    connack.properties.authentication_data = data;
}

/// A refusal with reason `code`; `why` becomes the Reason String of an
/// MQTT 5 CONNACK.
pub fn refused(code: u8, v5: bool, why: Option<&str>) -> Packet {
    let properties = Properties {
        reason_string: why.filter(|_| v5).map(str::to_owned),
        ..Default::default()
    };
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties,
    })
}

/// The answer to a CONNECT of a protocol version the gateway does not
/// speak ([MQTT-3.1.2-2]: the 3.1.1 form, return code 0x01).
pub fn unsupported_version() -> Packet {
    refused(reason::UNSUPPORTED_PROTOCOL_VERSION, false, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, Version};

    #[test]
    fn v5_acceptance_advertises_limits_and_v3_gets_none() {
        let m = MqttConfig {
            max_qos: 1,
            retain_available: false,
            ..Default::default()
        };
        let granted = Granted {
            server_keep_alive: Some(60),
            ..Default::default()
        };
        let a = accepted(&m, true, granted);
        assert_eq!(a.properties.maximum_qos, Some(1));
        assert_eq!(a.properties.retain_available, Some(0));
        assert_eq!(a.properties.server_keep_alive, Some(60));
        assert_eq!(a.properties.receive_maximum, Some(m.receive_maximum));
        let v3 = accepted(&m, false, Granted::default());
        assert!(v3.properties.is_empty());
    }

    #[test]
    fn refusals_map_to_3_1_1_return_codes() {
        let mut out = Vec::new();
        encode(
            &refused(reason::BAD_USERNAME_OR_PASSWORD, false, Some("x")),
            Version::V311,
            &mut out,
        );
        assert_eq!(out, [0x20, 2, 0, 4], "0x86 is 3.1.1's 4, no properties");
        out.clear();
        encode(&unsupported_version(), Version::V311, &mut out);
        assert_eq!(out, [0x20, 2, 0, 1]);
        let Packet::ConnAck(a) = refused(reason::SERVER_BUSY, true, Some("busy")) else {
            unreachable!()
        };
        assert_eq!(a.properties.reason_string.as_deref(), Some("busy"));
    }
}
