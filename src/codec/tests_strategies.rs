//! proptest strategies for packets valid in a given protocol version.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;
use proptest::sample::select;

use super::decode::is_valid_reason;
use super::properties::{PropertyContext as Ctx, allowed_in};
use super::wire::VARINT_MAX;
use super::*;
use ProtocolVersion::{V5, V311};

/// UTF-8 strings without U+0000.
pub(super) fn string() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,6}"
}

pub(super) fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

pub(super) fn level() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]{0,3}", "\\$SYS", "é"]
}

pub(super) fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(level(), 1..4)
        .prop_filter_map("non-empty", |levels| TopicName::new(&levels.join("/")).ok().filter(|t| !t.is_empty()))
}

pub(super) fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![level(), Just("+".to_owned())];
    (any::<bool>(), vec(level, 1..4), any::<bool>()).prop_filter_map("valid filter", |(share, levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        if share {
            f = format!("$share/g/{f}");
        }
        TopicFilter::new(&f).ok()
    })
}

pub(super) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

pub(super) fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_filter_map("non-zero", PacketId::new)
}

pub(super) fn flag() -> impl Strategy<Value = Option<u8>> {
    opt(0..=1u8)
}

/// Any valid value for every property; [`properties`] keeps the legal ones.
pub(super) fn all_properties() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        opt(any::<u32>()),
        opt(string()),
        opt(topic_name()),
        opt(bytes()),
        vec(1..=VARINT_MAX, 0..3),
        opt(any::<u32>()),
        opt(string()),
        opt(any::<u16>()),
        opt(string()),
    );
    let b = (
        opt(bytes()),
        flag(),
        opt(any::<u32>()),
        flag(),
        opt(string()),
        opt(string()),
        opt(string()),
        opt(1..=u16::MAX),
        opt(any::<u16>()),
        opt(1..=u16::MAX),
    );
    let c = (flag(), flag(), vec((string(), string()), 0..3), opt(1..=u32::MAX), flag(), flag(), flag());
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: b.0,
        request_problem_information: b.1,
        will_delay_interval: b.2,
        request_response_information: b.3,
        response_information: b.4,
        server_reference: b.5,
        reason_string: b.6,
        receive_maximum: b.7,
        topic_alias_maximum: b.8,
        topic_alias: b.9,
        maximum_qos: c.0,
        retain_available: c.1,
        user_properties: c.2,
        maximum_packet_size: c.3,
        wildcard_subscription_available: c.4,
        subscription_identifiers_available: c.5,
        shared_subscription_available: c.6,
    })
}

/// Clears `field` unless property `id` is legal in `ctx`.
macro_rules! keep {
    ($p:ident, $ctx:ident, $($id:literal => $field:ident),* $(,)?) => {
        $(if allowed_in($id).unwrap_or(0) & $ctx.bit() == 0 {
            $p.$field = Default::default();
        })*
    };
}

/// Properties legal in `ctx` for `version` (none at all in 3.1.1).
pub(super) fn properties(version: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    all_properties()
        .prop_map(move |mut p| {
            keep!(p, ctx,
                0x01 => payload_format_indicator, 0x02 => message_expiry_interval,
                0x03 => content_type, 0x08 => response_topic, 0x09 => correlation_data,
                0x0B => subscription_identifiers, 0x11 => session_expiry_interval,
                0x12 => assigned_client_identifier, 0x13 => server_keep_alive,
                0x15 => authentication_method, 0x16 => authentication_data,
                0x17 => request_problem_information, 0x18 => will_delay_interval,
                0x19 => request_response_information, 0x1A => response_information,
                0x1C => server_reference, 0x1F => reason_string, 0x21 => receive_maximum,
                0x22 => topic_alias_maximum, 0x23 => topic_alias, 0x24 => maximum_qos,
                0x25 => retain_available, 0x26 => user_properties, 0x27 => maximum_packet_size,
                0x28 => wildcard_subscription_available,
                0x29 => subscription_identifiers_available,
                0x2A => shared_subscription_available,
            );
            if p.authentication_method.is_none() {
                p.authentication_data = None;
            }
            if ctx == Ctx::Subscribe {
                p.subscription_identifiers.truncate(1);
            }
            p
        })
        .boxed()
}

/// A reason code defined for `packet_type`; success only in 3.1.1.
pub(super) fn reason(version: ProtocolVersion, packet_type: u8) -> BoxedStrategy<ReasonCode> {
    let codes: Vec<ReasonCode> = match (version, packet_type) {
        (V5, _) => (0..=255).filter(|&c| is_valid_reason(packet_type, c)).map(ReasonCode).collect(),
        // The codes the 3.1.1 CONNACK and SUBACK tables map back to.
        (V311, 2) => [0x00, 0x84, 0x85, 0x88, 0x86, 0x87].map(ReasonCode).to_vec(),
        (V311, 9) => [0x00, 0x01, 0x02, 0x80].map(ReasonCode).to_vec(),
        (V311, _) => vec![ReasonCode::SUCCESS],
    };
    select(codes).boxed()
}

pub(super) fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (topic_name(), bytes(), qos(), any::<bool>(), properties(version, Ctx::Will))
        .prop_map(|(topic, payload, qos, retain, properties)| Will { topic, payload, qos, retain, properties });
    let fields = (any::<bool>(), any::<u16>(), string(), opt(will), opt(string()), opt(bytes()));
    (fields, properties(version, Ctx::Connect)).prop_map(move |(f, properties)| {
        let (clean_start, keep_alive, client_id, will, username, mut password) = f;
        if !version.is_v5() && username.is_none() {
            password = None;
        }
        let connect =
            Connect { protocol: version, clean_start, keep_alive, client_id, will, username, password, properties };
        Packet::Connect(Box::new(connect))
    })
}

pub(super) fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let head = (any::<bool>(), qos(), any::<bool>(), topic_name(), any::<bool>(), packet_id());
    (head, properties(version, Ctx::Publish), bytes()).prop_map(move |(h, properties, payload)| {
        let (dup, qos, retain, mut topic, use_alias, id) = h;
        if version.is_v5() && use_alias && properties.topic_alias.is_some() {
            topic = TopicName::new("").unwrap_or(topic);
        }
        let packet_id = (qos != QoS::AtMostOnce).then_some(id);
        let dup = dup && packet_id.is_some();
        Packet::Publish(Publish { dup, qos, retain, topic, packet_id, properties, payload })
    })
}

pub(super) fn pub_resp(version: ProtocolVersion, packet_type: u8) -> impl Strategy<Value = Packet> {
    (packet_id(), reason(version, packet_type), properties(version, Ctx::PubResp)).prop_map(
        move |(packet_id, reason, properties)| {
            let r = PubResp { packet_id, reason, properties };
            match packet_type {
                4 => Packet::PubAck(r),
                5 => Packet::PubRec(r),
                6 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        },
    )
}

pub(super) fn options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), handling).prop_map(move |(qos, no_local, rap, retain_handling)| {
        if version.is_v5() {
            SubscriptionOptions { qos, no_local, retain_as_published: rap, retain_handling }
        } else {
            SubscriptionOptions { qos, ..SubscriptionOptions::default() }
        }
    })
}

pub(super) fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let filters = vec((topic_filter(), options(version)), 1..4).prop_map(|mut filters| {
        for (filter, options) in &mut filters {
            options.no_local &= filter.share_group().is_none();
        }
        filters
    });
    (packet_id(), properties(version, Ctx::Subscribe), filters)
        .prop_map(|(packet_id, properties, filters)| Packet::Subscribe(Subscribe { packet_id, properties, filters }))
}

pub(super) fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let connack = (any::<bool>(), reason(version, 2), properties(version, Ctx::ConnAck)).prop_map(
        |(session_present, reason, properties)| {
            let session_present = session_present && reason.is_success();
            Packet::ConnAck(ConnAck { session_present, reason, properties })
        },
    );
    let suback = (packet_id(), properties(version, Ctx::SubAck), vec(reason(version, 9), 1..4))
        .prop_map(|(packet_id, properties, reasons)| Packet::SubAck(SubAck { packet_id, properties, reasons }));
    let unsubscribe = (packet_id(), properties(version, Ctx::Unsubscribe), vec(topic_filter(), 1..4)).prop_map(
        |(packet_id, properties, filters)| Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters }),
    );
    let unsuback_reasons = if v5 { vec(reason(version, 11), 1..4).boxed() } else { Just(vec![]).boxed() };
    let unsuback = (packet_id(), properties(version, Ctx::UnsubAck), unsuback_reasons)
        .prop_map(|(packet_id, properties, reasons)| Packet::UnsubAck(UnsubAck { packet_id, properties, reasons }));
    let disconnect = (reason(version, 14), properties(version, Ctx::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let auth = (reason(version, 15), properties(version, Ctx::Auth))
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
    let common = prop_oneof![
        connect(version),
        connack,
        publish(version),
        pub_resp(version, 4),
        pub_resp(version, 5),
        pub_resp(version, 6),
        pub_resp(version, 7),
        subscribe(version),
        suback,
        unsubscribe,
        unsuback,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if v5 { prop_oneof![14 => common, 1 => auth].boxed() } else { common.boxed() }
}

pub(super) fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V311), Just(V5)]
}

pub(super) fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}
