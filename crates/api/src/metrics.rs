//! Metrics over HTTP: every request counted by method, route template and status
//! ([`with_http_metrics`]), and `GET /metrics` on a listener of its own ([`metrics_routes`],
//! [`MetricsListener`]): never on the public API port, where `/metrics` is a 404 like any
//! unknown path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::PathPattern;
use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};
use ringline_metrics::http::UNMATCHED_ROUTE;
use ringline_metrics::{CONTENT_TYPE, Metrics, ScrapeGauges};

use crate::listener::{ConnectionAcceptor, ListenerSettings};

/// How long a scrape waits for the gauges read from the database: a scrape answers with the
/// last values rather than hang on a slow database.
const GAUGE_DEADLINE: Duration = Duration::from_secs(2);

/// Connections the metrics listener keeps at most: a few Prometheus servers, not the world.
const MAX_SCRAPERS: usize = 32;

/// The routes as the published document names them, parameters written `:name`
/// (`/api/calls/:id/accept/`), by the pattern poem-openapi's router matches them with
/// (`/api/calls/:param0/accept`).
#[derive(Debug, Default)]
pub(crate) struct RouteNames(HashMap<String, String>);

impl RouteNames {
    /// From the generated OpenAPI document and how it is published (`publish` maps a
    /// generated path to the published one).
    pub(crate) fn from_spec(generated: &str, publish: impl Fn(&str) -> String) -> Self {
        let document: serde_json::Value = serde_json::from_str(generated).unwrap_or_default();
        let paths = document.get("paths").and_then(serde_json::Value::as_object);
        let names = paths
            .into_iter()
            .flat_map(|paths| paths.keys())
            .map(|path| {
                let mut parameter = 0;
                let routed: Vec<String> = path
                    .split('/')
                    .map(|segment| {
                        if segment.starts_with('{') {
                            parameter += 1;
                            format!(":param{}", parameter - 1)
                        } else {
                            segment.to_owned()
                        }
                    })
                    .collect();
                // `{id}` as `:id`: braces inside label values trip up some exposition parsers.
                let named: Vec<String> = publish(path)
                    .split('/')
                    .map(|segment| match segment.strip_prefix('{').and_then(|name| name.strip_suffix('}')) {
                        Some(name) => format!(":{name}"),
                        None => segment.to_owned(),
                    })
                    .collect();
                (routed.join("/"), named.join("/"))
            })
            .collect();
        Self(names)
    }

    fn name<'a>(&'a self, pattern: &'a str) -> &'a str {
        self.0.get(pattern).map_or(pattern, String::as_str)
    }
}

/// Counts every request `endpoint` answers in `metrics`, by the route it matched: a template
/// of the router's (named as the published document names it), so the label's values are
/// bounded by the routes that exist.
pub(crate) fn with_http_metrics(
    endpoint: impl Endpoint + 'static,
    metrics: Arc<Metrics>,
    routes: RouteNames,
) -> impl Endpoint + 'static {
    let routes = Arc::new(routes);
    endpoint.around(move |inner, req| {
        let metrics = metrics.clone();
        let routes = routes.clone();
        async move {
            let started = Instant::now();
            let method = req.method().clone();
            let answered = inner.call(req).await.map(IntoResponse::into_response);
            let (status, route) = match &answered {
                Ok(response) => (response.status(), response.data::<PathPattern>().map(|pattern| pattern.0.clone())),
                Err(error) => (error.status(), error.data::<PathPattern>().map(|pattern| pattern.0.clone())),
            };
            let route = route.as_deref().map_or(UNMATCHED_ROUTE, |pattern| routes.name(pattern));
            metrics.http.answered(method.as_str(), route, status.as_u16(), started.elapsed());
            answered
        }
    })
}

/// `GET /metrics`: the gauges read at scrape time refreshed (within a deadline), then the
/// whole registry in the OpenMetrics text format.
pub fn metrics_routes(metrics: Arc<Metrics>, gauges: Option<Arc<dyn ScrapeGauges>>) -> impl Endpoint + 'static {
    #[handler]
    async fn scrape(
        metrics: poem::web::Data<&Arc<Metrics>>,
        gauges: poem::web::Data<&Option<Arc<dyn ScrapeGauges>>>,
    ) -> Response {
        if let Some(gauges) = gauges.0.as_ref()
            && tokio::time::timeout(GAUGE_DEADLINE, gauges.refresh(&metrics)).await.is_err()
        {
            tracing::warn!("the gauges read at scrape time took too long; the last values are served");
        }
        Response::builder().status(StatusCode::OK).content_type(CONTENT_TYPE).body(metrics.render())
    }
    Route::new().at("/metrics", get(scrape)).data(metrics).data(gauges)
}

/// The metrics listener: bounded like the public one (header deadline, idle timeout, a cap on
/// connections), since whoever reaches the address can connect.
#[derive(Debug)]
pub struct MetricsListener(ConnectionAcceptor);

impl MetricsListener {
    /// Binds `address`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(address: std::net::SocketAddr) -> std::io::Result<Self> {
        let settings = ListenerSettings {
            bind: address,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_connections: MAX_SCRAPERS,
            max_per_address: MAX_SCRAPERS,
            exempt: Vec::new(),
        };
        Ok(Self(ConnectionAcceptor::bind(&settings).await?))
    }

    /// The address bound (useful with port 0).
    pub fn local_socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.0.local_socket_addr()
    }

    /// Serves `GET /metrics` until `shutdown` resolves.
    ///
    /// # Errors
    /// When the server fails to run.
    pub async fn serve(
        self,
        metrics: Arc<Metrics>,
        gauges: Option<Arc<dyn ScrapeGauges>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::serving::serve(self.0, metrics_routes(metrics, gauges), shutdown, Duration::from_secs(1)).await
    }
}
