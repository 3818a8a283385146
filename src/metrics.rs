//! Every Prometheus collector in one place, one registry per server. Names carry the
//! `switchyard_` prefix and their unit; labels are bounded (no ids).

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub ws_sockets: IntGauge,
    pub ws_channels: IntGauge,
    pub ws_frames_sent: IntCounter,
    pub ws_lagged: IntCounter,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("collector names are unique");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        Metrics {
            ws_sockets: gauge(
                "switchyard_websocket_sockets",
                "Open WebSocket connections.",
            ),
            ws_channels: gauge(
                "switchyard_websocket_channels",
                "Channels joined over all open WebSocket connections.",
            ),
            ws_frames_sent: counter(
                "switchyard_websocket_frames_sent_total",
                "Frames sent to WebSocket clients.",
            ),
            ws_lagged: counter(
                "switchyard_websocket_lagged_total",
                "Times a WebSocket channel fell behind the live feed and caught up from the log.",
            ),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
