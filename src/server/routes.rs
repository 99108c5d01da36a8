//! Which handler answers which path, after the checks every request gets: unambiguous
//! framing, the connection's admission, and the API token.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request};
use serde_json::json;

use super::api_error::ApiError;
use super::connection::Admission;
use super::http::{Reply, clip, closing, error, json, text, unavailable};
use super::params::Endpoint;
use super::{ServerContext, completion};

pub async fn handle(ctx: &Arc<ServerContext>, req: Request<Incoming>, admission: Admission) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if req.headers().contains_key(TRANSFER_ENCODING) && req.headers().contains_key(CONTENT_LENGTH) {
        // RFC 9112 6.3: both framings at once is how requests are smuggled; refuse and close.
        let e = ApiError::bad_request("a request may carry Content-Length or Transfer-Encoding, not both");
        return closing(error(&e));
    }
    let probe_route = method == Method::GET && matches!(path.as_str(), "/health" | "/metrics");
    if admission == Admission::Probe && !probe_route {
        ctx.refuse("overloaded", "a connection over server.max_connections asked for more than /health or /metrics");
        return unavailable(&ApiError::new(503, "server_error", "overloaded", "too many open connections"));
    }
    if path != "/health"
        && let Some(token) = &ctx.token
        && !token.admits(req.headers())
    {
        let e = ApiError::new(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "this server needs `Authorization: Bearer <token>` with its API token",
        );
        return error(&e);
    }
    match (&method, path.as_str()) {
        (&Method::POST, "/v1/completions" | "/v1/chat/completions") if ctx.is_draining() => {
            ctx.refuse("shutting_down", "draining before exit; answered 503");
            shutting_down()
        }
        (&Method::POST, "/v1/completions") => completion::generate(ctx.clone(), req, Endpoint::Completions).await,
        (&Method::POST, "/v1/chat/completions") => completion::generate(ctx.clone(), req, Endpoint::Chat).await,
        (&Method::GET, "/v1/models") => {
            let body = json!({"object": "list", "data": [{
                "id": ctx.limits.model_name, "object": "model", "created": 0, "owned_by": "kiln",
                "max_model_len": ctx.limits.context,
            }]});
            json(200, &body)
        }
        (&Method::GET, "/health") => health(ctx),
        (&Method::GET, "/metrics") => {
            text(200, "text/plain; version=0.0.4", ctx.metrics.render(&ctx.limits.model_name))
        }
        (&Method::GET, "/v1/plan") => json(200, &ctx.plan_info),
        (_, "/v1/completions" | "/v1/chat/completions" | "/v1/models" | "/health" | "/metrics" | "/v1/plan") => {
            let e = ApiError::new(
                405,
                "invalid_request_error",
                "method_not_allowed",
                format!("{path} does not take {}", clip(method.as_str())),
            );
            error(&e)
        }
        _ => error(&ApiError::new(404, "invalid_request_error", "not_found", format!("no route {}", clip(&path)))),
    }
}

fn health(ctx: &ServerContext) -> Reply {
    let (alive, since) = ctx.engine.health();
    if ctx.is_draining() {
        text(503, "text/plain", "shutting down: draining requests in flight\n".into())
    } else if alive && since <= ctx.health_stale_after {
        text(200, "text/plain", "ok\n".into())
    } else {
        let why = if alive {
            format!("engine has not stepped for {:.1} s\n", since.as_secs_f64())
        } else {
            "engine thread is down\n".into()
        };
        text(503, "text/plain", why)
    }
}

/// After SIGTERM: new work goes to another replica; the connection is closed.
fn shutting_down() -> Reply {
    unavailable(&ApiError::new(
        503,
        "server_error",
        "shutting_down",
        "kiln is shutting down and takes no new requests; requests in flight finish",
    ))
}
