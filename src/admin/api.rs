//! The admin endpoints. Everything but `/health` and `/ready` needs the
//! bearer token when one is configured, and the state-changing ones (kick,
//! reload) need it always: without a token they are refused. Answers never
//! carry passwords, tokens, authentication data or payloads.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::prometheus;
use super::{Request, Response};
use crate::broker::Broker;
use crate::reload::{PluginReport, Reloader};

/// Answers one request.
pub async fn handle(reloader: &Arc<Reloader>, request: &Request) -> Response {
    let broker = reloader.broker();
    let method = request.method.as_str();
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["health"]) => Response::json(200, &json!({ "status": "ok" })),
        ("GET", ["ready"]) if broker.metrics.is_ready() => Response::json(200, &json!({ "status": "ready" })),
        ("GET", ["ready"]) => Response::json(503, &json!({ "status": "starting" })),
        _ if !request.authorized => Response::error(401, "missing or wrong bearer token"),
        ("GET", ["metrics"]) => {
            Response { status: 200, content_type: prometheus::CONTENT_TYPE, body: prometheus::render(broker) }
        }
        ("GET", ["api", "clients"]) => Response::json(200, &clients(broker)),
        ("GET", ["api", "sessions"]) => Response::json(200, &sessions(broker)),
        ("GET", ["api", "subscriptions"]) => Response::json(200, &subscriptions(broker)),
        ("GET", ["api", "plugins"]) => Response::json(200, &plugins(broker)),
        ("POST", ["api", "clients", _, "kick"] | ["api", "reload"]) if !request.token_presented => {
            Response::error(403, "kick and reload need a token, and none is in force: set [admin] token or token_file")
        }
        ("POST", ["api", "clients", id, "kick"]) => kick(broker, id),
        ("POST", ["api", "reload"]) => reload(reloader).await,
        (
            _,
            ["health" | "ready" | "metrics"] | ["api", "clients" | "sessions" | "subscriptions" | "plugins" | "reload"],
        )
        | (_, ["api", "clients", _, "kick"]) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "no such endpoint"),
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Connected clients.
fn clients(broker: &Broker) -> Value {
    let mut list = Vec::new();
    for session in broker.sessions.all() {
        let state = session.lock();
        let Some(c) = state.connection() else { continue };
        list.push(json!({
            "client_id": &**session.client_id(),
            "username": c.username,
            "claimed_username": c.claimed_username,
            "peer": c.peer.to_string(),
            "listener": c.listener,
            "protocol": if c.protocol.is_v5() { "5.0" } else { "3.1.1" },
            "connected_since": unix_seconds(c.since),
        }));
    }
    list.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
    Value::Array(list)
}

/// Every session, connected or not.
fn sessions(broker: &Broker) -> Value {
    let mut list = Vec::new();
    for session in broker.sessions.all() {
        let state = session.lock();
        list.push(json!({
            "client_id": &**session.client_id(),
            "connected": state.online,
            "expiry_s": state.expiry_s,
            "subscriptions": state.subscriptions.len(),
            "queued": state.pending.len(),
            "inflight": state.inflight.len(),
            "dropped": session.dropped(),
        }));
    }
    list.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
    Value::Array(list)
}

/// Every subscription, by session.
fn subscriptions(broker: &Broker) -> Value {
    let mut list = Vec::new();
    for session in broker.sessions.all() {
        let state = session.lock();
        for (filter, sub) in &state.subscriptions {
            list.push(json!({
                "client_id": &**session.client_id(),
                "filter": filter.as_str(),
                "qos": sub.options.qos as u8,
                "no_local": sub.options.no_local,
                "retain_as_published": sub.options.retain_as_published,
                "subscription_id": sub.id,
            }));
        }
    }
    list.sort_by(|a, b| {
        (a["client_id"].as_str(), a["filter"].as_str()).cmp(&(b["client_id"].as_str(), b["filter"].as_str()))
    });
    Value::Array(list)
}

/// The plugin chain: manifest, limits and counters of each plugin.
fn plugins(broker: &Broker) -> Value {
    let policy = broker.policy();
    let list = policy
        .plugins()
        .plugins()
        .iter()
        .map(|p| {
            let settings = p.settings();
            let limits = &settings.limits;
            let stats = p.stats().snapshot();
            let hooks: Vec<&str> = p.manifest().hooks.iter().map(|h| h.name()).collect();
            let filters: Vec<&str> = p.manifest().transform_filters.iter().map(|f| f.as_str()).collect();
            json!({
                "name": &**p.name(),
                "path": p.path().display().to_string(),
                "order": settings.order,
                "manifest": { "hooks": hooks, "transform_filters": filters },
                "limits": {
                    "memory_bytes": limits.memory_bytes,
                    "timeout_ms": u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
                    "instances": p.warm_instances(),
                    "max_answer_bytes": limits.max_answer_bytes,
                },
                "counters": {
                    "calls": stats.calls,
                    "denials": stats.denials,
                    "traps": stats.traps,
                    "timeouts": stats.timeouts,
                    "out_of_memory": stats.out_of_memory,
                    "exchanges_refused": stats.exchanges_refused,
                    "output_lines": stats.output_lines,
                    "output_dropped": stats.output_dropped,
                    "bad_answers": stats.bad_answers,
                },
                "decisions": decisions(p.manifest(), &stats),
            })
        })
        .collect();
    Value::Array(list)
}

/// How a plugin's calls ended: `{ "authorize": { "allow": 3, ... } }` for
/// each hook it implements.
fn decisions(manifest: &crate::plugin::Manifest, stats: &crate::plugin::StatsSnapshot) -> Value {
    let hooks = manifest.hooks.iter().map(|&hook| {
        let counts = crate::plugin::Decision::of(hook)
            .iter()
            .map(|&d| (d.label().to_owned(), Value::from(stats.decisions(hook, d))))
            .collect::<serde_json::Map<_, _>>();
        (hook.name().to_owned(), Value::Object(counts))
    });
    Value::Object(hooks.collect())
}

fn kick(broker: &Broker, client_id: &str) -> Response {
    let client_id = percent_decode(client_id);
    if broker.kick(&client_id) {
        tracing::info!(client_id, "client disconnected by an operator");
        Response::json(200, &json!({ "kicked": client_id }))
    } else {
        Response::error(404, "no such connected client")
    }
}

/// Reads the configuration again and reloads the plugins, as SIGHUP does.
/// The reload runs in its own task: a client that gives up (or the request
/// deadline) must not cancel it half-way.
async fn reload(reloader: &Arc<Reloader>) -> Response {
    let task = tokio::spawn({
        let reloader = reloader.clone();
        async move { reloader.reload().await }
    });
    let report = match task.await {
        Ok(Ok(report)) => report,
        Ok(Err(refused)) => return Response::error(422, &refused.0),
        Err(e) => {
            tracing::error!(error = %e, "reload task failed");
            return Response::error(500, "the reload stopped");
        }
    };
    let plugins = match &report.plugins {
        PluginReport::Swapped { generation, added, removed, reloaded, subscriptions_removed, compiled, took } => {
            json!({
                "swapped": true,
                "generation": generation,
                "added": added,
                "removed": removed,
                "reloaded": reloaded,
                "subscriptions_removed": subscriptions_removed,
                "compiled": compiled,
                "took_ms": u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            })
        }
        PluginReport::Refused { reason } => json!({ "swapped": false, "reason": reason }),
    };
    Response::json(
        200,
        &json!({
            "applied": report.applied,
            "tls_reloaded": report.tls_reloaded,
            "needs_restart": report.needs_restart,
            "plugins": plugins,
        }),
    )
}

/// Decodes `%XX` escapes in a path segment (client ids may hold any
/// character); an invalid escape is kept as is.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
