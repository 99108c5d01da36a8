//! Which handler answers which path.

use serde_json::json;
use tiny_http::{Method, Request};

use super::api_error::ApiError;
use super::http::{read_body, respond_error, respond_json, respond_text};
use super::params::{Endpoint, prepare};
use super::{ServerContext, completion};

pub fn handle(ctx: &ServerContext, req: Request) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::Post, "/v1/completions" | "/v1/chat/completions") if ctx.is_draining() => shutting_down(req),
        (Method::Post, "/v1/completions") => generate(ctx, req, Endpoint::Completions),
        (Method::Post, "/v1/chat/completions") => generate(ctx, req, Endpoint::Chat),
        (Method::Get, "/v1/models") => {
            let body = json!({"object": "list", "data": [{
                "id": ctx.limits.model_name, "object": "model", "created": 0, "owned_by": "kiln",
                "max_model_len": ctx.limits.context,
            }]});
            respond_json(req, 200, &body, &[]);
        }
        (Method::Get, "/health") => {
            let (alive, since) = ctx.engine.health();
            if ctx.is_draining() {
                respond_text(req, 503, "text/plain", "shutting down: draining requests in flight\n".into());
            } else if alive && since <= ctx.health_stale_after {
                respond_text(req, 200, "text/plain", "ok\n".into());
            } else {
                let why = if alive {
                    format!("engine has not stepped for {:.1} s\n", since.as_secs_f64())
                } else {
                    "engine thread is down\n".into()
                };
                respond_text(req, 503, "text/plain", why);
            }
        }
        (Method::Get, "/metrics") => {
            respond_text(req, 200, "text/plain; version=0.0.4", ctx.metrics.render(&ctx.limits.model_name))
        }
        (Method::Get, "/v1/plan") => respond_json(req, 200, &ctx.plan_info, &[]),
        (_, "/v1/completions" | "/v1/chat/completions" | "/v1/models" | "/health" | "/metrics" | "/v1/plan") => {
            let e = ApiError::new(
                405,
                "invalid_request_error",
                "method_not_allowed",
                format!("{} does not take {}", path, req.method()),
            );
            respond_error(req, &e)
        }
        _ => {
            let e = ApiError::new(404, "invalid_request_error", "not_found", format!("no route {path}"));
            respond_error(req, &e)
        }
    }
}

fn generate(ctx: &ServerContext, mut req: Request, endpoint: Endpoint) {
    let body = match read_body(&mut req, ctx.body_limit) {
        Ok(b) => b,
        Err(e) => return respond_error(req, &e),
    };
    match prepare(endpoint, &body, &ctx.tokenizer, &ctx.limits) {
        Ok(prep) => completion::run(ctx, req, prep),
        Err(e) => respond_error(req, &e),
    }
}

/// Too many connections at once: 503 without reading the request.
pub fn overloaded(req: Request) {
    unavailable(req, &ApiError::new(503, "server_error", "overloaded", "too many concurrent connections"));
}

/// After SIGTERM: new work goes to another replica; the connection is closed.
fn shutting_down(req: Request) {
    let e = ApiError::new(
        503,
        "server_error",
        "shutting_down",
        "kiln is shutting down and takes no new requests; requests in flight finish",
    );
    unavailable(req, &e);
}

fn unavailable(req: Request, e: &ApiError) {
    let mut r = tiny_http::Response::from_string(e.body().to_string()).with_status_code(e.status);
    for (k, v) in [("Retry-After", "1"), ("Content-Type", "application/json")] {
        r.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("static header"));
    }
    let _ = req.respond(r);
}
