//! The Prometheus text exposition format (0.0.4) of the broker's metrics,
//! with `# HELP` and `# TYPE` lines. Rendered on demand at each scrape; the
//! gauges that cost a walk over sessions are computed only here.

use std::fmt::Write as _;

use crate::broker::Broker;
use crate::metrics::{BUCKETS_US, DropReason, Gauges, Limit, QueueTotals, Refusal};
use crate::plugin::{Decision, StatsSnapshot};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything the broker and its plugins count, as Prometheus text.
pub fn render(broker: &Broker) -> String {
    let s = broker.metrics.snapshot();
    let mut out = String::with_capacity(4096);
    let w = &mut out;
    header(w, "moat_uptime_seconds", "gauge", "Seconds since the broker started.");
    line(w, "moat_uptime_seconds", "", s.uptime_s);
    header(w, "moat_ready", "gauge", "1 once listeners are bound and plugins loaded.");
    line(w, "moat_ready", "", u64::from(broker.metrics.is_ready()));
    header(w, "moat_connections", "gauge", "Client connections open now.");
    line(w, "moat_connections", "", s.connections_current);
    header(w, "moat_connections_parked", "gauge", "Of those, connections parked while quiet (limits.park_after_s).");
    line(w, "moat_connections_parked", "", s.connections_parked);
    header(w, "moat_connections_total", "counter", "Client connections accepted (CONNACK success).");
    line(w, "moat_connections_total", "", s.connections_total);
    header(w, "moat_connections_refused_total", "counter", "Connections refused before being served, by reason.");
    for (reason, n) in Refusal::ALL.iter().zip(s.refused) {
        line(w, "moat_connections_refused_total", &format!("reason=\"{}\"", reason.label()), n);
    }
    header(w, "moat_messages_received_total", "counter", "PUBLISH packets received from clients, by QoS.");
    for (qos, n) in s.received.iter().enumerate() {
        line(w, "moat_messages_received_total", &format!("qos=\"{qos}\""), *n);
    }
    header(w, "moat_messages_sent_total", "counter", "PUBLISH packets sent to clients, by QoS.");
    for (qos, n) in s.sent.iter().enumerate() {
        line(w, "moat_messages_sent_total", &format!("qos=\"{qos}\""), *n);
    }
    header(w, "moat_bytes_received_total", "counter", "MQTT bytes read from clients.");
    line(w, "moat_bytes_received_total", "", s.bytes_received);
    header(w, "moat_bytes_sent_total", "counter", "MQTT bytes written to clients.");
    line(w, "moat_bytes_sent_total", "", s.bytes_sent);
    header(
        w,
        "moat_dropped_messages_total",
        "counter",
        "Messages not delivered to a receiver (or not routed), by reason.",
    );
    for (reason, n) in DropReason::ALL.iter().zip(s.dropped) {
        line(w, "moat_dropped_messages_total", &format!("reason=\"{}\"", reason.label()), n);
    }
    header(w, "moat_limit_hits_total", "counter", "Times a client ran into a configured limit, by limit.");
    for (limit, n) in Limit::ALL.iter().zip(s.limit_hits) {
        line(w, "moat_limit_hits_total", &format!("limit=\"{}\"", limit.label()), n);
    }
    header(
        w,
        "moat_shared_redispatched_total",
        "counter",
        "Share groups' QoS 1/2 messages a leaving member gave up, sent on to another member or the group's queue.",
    );
    line(w, "moat_shared_redispatched_total", "", s.redispatched);
    header(w, "moat_auth_total", "counter", "Authentication decisions at CONNECT, by outcome.");
    line(w, "moat_auth_total", "outcome=\"success\"", s.auth_successes);
    line(w, "moat_auth_total", "outcome=\"failure\"", s.auth_failures);
    render_gauges(w, broker.gauges(), broker.queue_totals());
    header(w, "moat_plugin_reloads_total", "counter", "Plugin set reloads, by outcome.");
    line(w, "moat_plugin_reloads_total", "outcome=\"ok\"", s.reloads_ok);
    line(w, "moat_plugin_reloads_total", "outcome=\"failed\"", s.reloads_failed);
    render_plugins(w, broker);
    out
}

/// Gauges read from the broker's state rather than counted.
fn render_gauges(w: &mut String, gauges: Gauges, queues: QueueTotals) {
    header(w, "moat_sessions", "gauge", "Sessions, connected or not.");
    line(w, "moat_sessions", "", gauges.sessions as u64);
    header(w, "moat_queued_messages", "gauge", "Messages waiting in session queues.");
    line(w, "moat_queued_messages", "", queues.queued as u64);
    header(w, "moat_inflight_messages", "gauge", "Outgoing QoS 1/2 messages awaiting acknowledgement.");
    line(w, "moat_inflight_messages", "", queues.inflight as u64);
    header(w, "moat_share_group_waiting_messages", "gauge", "Messages waiting in share groups for a member.");
    line(w, "moat_share_group_waiting_messages", "", gauges.share_waiting as u64);
    header(w, "moat_retained_messages", "gauge", "Retained messages stored.");
    line(w, "moat_retained_messages", "", gauges.retained as u64);
    header(w, "moat_subscriptions", "gauge", "Subscriptions in the index.");
    line(w, "moat_subscriptions", "", gauges.subscriptions as u64);
}

/// Reads one counter out of a plugin's snapshot.
type Counter = fn(&StatsSnapshot) -> u64;

/// Per-plugin counters and the call latency histogram.
fn render_plugins(w: &mut String, broker: &Broker) {
    let stats = broker.policy().stats();
    let counters: [(&str, &str, Counter); 9] = [
        ("moat_plugin_calls_total", "Hook calls, failed ones included.", |s| s.calls),
        (
            "moat_plugin_denials_total",
            "Refusals the plugin decided: its deny answers plus its failed calls (see moat_plugin_decisions_total).",
            |s| s.denials,
        ),
        ("moat_plugin_traps_total", "Calls that trapped (panic, abort, failed instantiation).", |s| s.traps),
        ("moat_plugin_timeouts_total", "Calls interrupted at their deadline.", |s| s.timeouts),
        ("moat_plugin_out_of_memory_total", "Calls that hit the memory cap.", |s| s.out_of_memory),
        ("moat_plugin_bad_answers_total", "Answers refused as oversized or malformed.", |s| s.bad_answers),
        ("moat_plugin_exchanges_refused_total", "MQTT 5 AUTH exchanges refused: limits.exchanges held.", |s| {
            s.exchanges_refused
        }),
        ("moat_plugin_output_lines_total", "Lines of plugin output (stdout, stderr, host.log) logged.", |s| {
            s.output_lines
        }),
        ("moat_plugin_output_dropped_total", "Lines of plugin output dropped (rate, per-call share, off).", |s| {
            s.output_dropped
        }),
    ];
    for (name, help, get) in counters {
        header(w, name, "counter", help);
        for (plugin, snapshot) in &stats {
            line(w, name, &format!("plugin=\"{}\"", escape(plugin)), get(snapshot));
        }
    }
    render_decisions(w, broker);
    let name = "moat_plugin_call_duration_seconds";
    header(w, name, "histogram", "Duration of hook calls.");
    for (plugin, snapshot) in &stats {
        let plugin = escape(plugin);
        let mut cumulative = 0;
        for (bound, n) in BUCKETS_US.iter().zip(snapshot.latency.counts) {
            cumulative += n;
            let le = *bound as f64 / 1e6;
            line(w, &format!("{name}_bucket"), &format!("plugin=\"{plugin}\",le=\"{le}\""), cumulative);
        }
        let count = snapshot.latency.count();
        line(w, &format!("{name}_bucket"), &format!("plugin=\"{plugin}\",le=\"+Inf\""), count);
        let sum = snapshot.latency.sum_ns as f64 / 1e9;
        let _ = writeln!(w, "{name}_sum{{plugin=\"{plugin}\"}} {sum}");
        line(w, &format!("{name}_count"), &format!("plugin=\"{plugin}\""), count);
    }
}

/// How each plugin's calls ended, per hook it implements and decision.
fn render_decisions(w: &mut String, broker: &Broker) {
    let name = "moat_plugin_decisions_total";
    header(
        w,
        name,
        "counter",
        "Hook calls by how they ended: allow, deny, ignore, continue (authenticate); pass, replace, drop \
         (transform); failure (trap, timeout, out of memory, refused answer).",
    );
    let policy = broker.policy();
    for plugin in policy.plugins().plugins() {
        let snapshot = plugin.stats().snapshot();
        let label = escape(plugin.name());
        for &hook in &plugin.manifest().hooks {
            for &decision in Decision::of(hook) {
                let labels = format!("plugin=\"{label}\",hook=\"{}\",decision=\"{}\"", hook.name(), decision.label());
                line(w, name, &labels, snapshot.decisions(hook, decision));
            }
        }
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

fn line(w: &mut String, name: &str, labels: &str, value: u64) {
    if labels.is_empty() {
        let _ = writeln!(w, "{name} {value}");
    } else {
        let _ = writeln!(w, "{name}{{{labels}}} {value}");
    }
}

/// Escapes a label value (plugin names are file stems, so anything goes).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
