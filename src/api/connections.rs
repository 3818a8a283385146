//! Open connections per client address (`limits.ip_max_connections`): one address holding more
//! gets 429 `rate_limited` on each request of the extra connections, which are then closed.
//!
//! Counting happens where actix-web accepts a connection ([`ConnectionLimiter::on_connect`]):
//! the [`ConnectionSlot`] it leaves in the connection's data is dropped with the connection,
//! which gives the address its place back. The refusal itself is an answer, not a reset, so a
//! client sees why ([`refuse_over_cap`]).

use actix_web::body::MessageBody;
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::ResponseError;
use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::error::{ApiError, ErrorCode};

pub struct ConnectionLimiter {
    /// 0: no cap (connections are then not tracked at all).
    max_per_ip: usize,
    /// A std mutex: every access is a counter update, never across an await.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One accepted connection's place; gives it back when dropped (with the connection).
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
    /// Accepted beyond the cap: every request on it is refused.
    over: bool,
}

impl ConnectionLimiter {
    pub fn new(max_per_ip: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            max_per_ip,
            open: Mutex::default(),
        })
    }

    /// For `HttpServer::on_connect`: counts the connection's peer address.
    pub fn on_connect(self: &Arc<Self>, conn: &dyn Any, data: &mut Extensions) {
        if self.max_per_ip == 0 {
            return;
        }
        let Some(peer) = conn
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|s| s.peer_addr().ok())
        else {
            return;
        };
        data.insert(self.admit(peer.ip()));
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> ConnectionSlot {
        let mut open = self.open.lock().expect("connection counts lock");
        let count = open.entry(ip).or_insert(0);
        *count += 1;
        ConnectionSlot {
            limiter: self.clone(),
            ip,
            over: *count > self.max_per_ip,
        }
    }

    /// Connections currently open from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().expect("connection counts lock");
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().expect("connection counts lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answers every request of a connection accepted over its address's cap with 429 (and
/// `Connection: close`), before any handler reads a byte of its body.
pub async fn refuse_over_cap(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let over = req
        .conn_data::<ConnectionSlot>()
        .filter(|slot| slot.over)
        .map(|slot| slot.limiter.max_per_ip);
    let Some(max) = over else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let err = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many open connections from your address (at most {max}); reuse or close some"),
    );
    let mut res = err.error_response();
    res.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(req.into_response(res).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_address_and_give_their_place_back() {
        let limiter = ConnectionLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limiter.admit(a);
        let second = limiter.admit(a);
        let third = limiter.admit(a);
        assert!(!first.over && !second.over && third.over);
        assert!(!limiter.admit(b).over, "another address has its own count");
        drop(third);
        drop(first);
        assert_eq!(limiter.open_from(a), 1);
        assert!(!limiter.admit(a).over);
        assert_eq!(limiter.open_from(b), 0);
    }
}
