//! Demo upstream services, run in-process by `gatehouse demo` and used by the end-to-end
//! tests as real HTTP peers:
//! - `catalog`: a small JSON API of books and authors (shared in-memory store);
//! - `echo`: reflects the request back as JSON, plus `/status/{code}`, `/delay/{ms}`,
//!   `/bytes/{n}` and a WebSocket echo at `/ws`.
//!
//! Every response carries `x-demo-instance` so load balancing is visible.

pub mod mesh;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[derive(Clone, Serialize)]
struct Book {
    id: u64,
    title: String,
    author_id: u64,
}

#[derive(Deserialize)]
struct NewBook {
    title: String,
    author_id: u64,
}

/// The catalog's data, shared by all catalog instances (as a database would be).
#[derive(Default)]
pub struct CatalogStore {
    books: Mutex<BTreeMap<u64, Book>>,
    authors: BTreeMap<u64, Value>,
    next_id: AtomicU64,
}

impl CatalogStore {
    pub fn seeded() -> Arc<Self> {
        let authors = BTreeMap::from([
            (1, json!({"id": 1, "name": "Ursula K. Le Guin"})),
            (2, json!({"id": 2, "name": "Stanisław Lem"})),
        ]);
        let books = BTreeMap::from([
            (
                1,
                Book {
                    id: 1,
                    title: "The Dispossessed".into(),
                    author_id: 1,
                },
            ),
            (
                2,
                Book {
                    id: 2,
                    title: "Solaris".into(),
                    author_id: 2,
                },
            ),
            (
                3,
                Book {
                    id: 3,
                    title: "The Left Hand of Darkness".into(),
                    author_id: 1,
                },
            ),
        ]);
        Arc::new(Self {
            books: Mutex::new(books),
            authors,
            next_id: AtomicU64::new(4),
        })
    }

    fn books(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Book>> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct CatalogState {
    instance: &'static str,
    store: Arc<CatalogStore>,
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [("content-type", "application/problem+json")],
        json!({"title": "Not Found", "status": 404, "detail": format!("{what} not found")})
            .to_string(),
    )
        .into_response()
}

pub fn catalog_router(instance: &'static str, store: Arc<CatalogStore>) -> Router {
    let state = CatalogState { instance, store };
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/books", get(list_books).post(create_book))
        .route("/books/{id}", get(get_book).delete(delete_book))
        .route("/authors", get(list_authors))
        .route("/authors/{id}", get(get_author))
        .layer(axum::middleware::map_response_with_state(
            instance,
            tag_instance,
        ))
        .with_state(state)
}

async fn tag_instance(State(instance): State<&'static str>, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-demo-instance", HeaderValue::from_static(instance));
    response
}

async fn list_books(State(state): State<CatalogState>) -> Json<Value> {
    let books: Vec<Book> = state.store.books().values().cloned().collect();
    Json(json!({ "instance": state.instance, "books": books }))
}

async fn get_book(State(state): State<CatalogState>, Path(id): Path<u64>) -> Response {
    match state.store.books().get(&id) {
        Some(book) => Json(json!({ "instance": state.instance, "book": book })).into_response(),
        None => not_found(&format!("book {id}")),
    }
}

async fn create_book(State(state): State<CatalogState>, Json(new): Json<NewBook>) -> Response {
    let id = state.store.next_id.fetch_add(1, Ordering::Relaxed);
    let book = Book {
        id,
        title: new.title,
        author_id: new.author_id,
    };
    state.store.books().insert(id, book.clone());
    (
        StatusCode::CREATED,
        Json(json!({ "instance": state.instance, "book": book })),
    )
        .into_response()
}

async fn delete_book(State(state): State<CatalogState>, Path(id): Path<u64>) -> Response {
    match state.store.books().remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&format!("book {id}")),
    }
}

async fn list_authors(State(state): State<CatalogState>) -> Json<Value> {
    let authors: Vec<&Value> = state.store.authors.values().collect();
    Json(json!({ "instance": state.instance, "authors": authors }))
}

async fn get_author(State(state): State<CatalogState>, Path(id): Path<u64>) -> Response {
    match state.store.authors.get(&id) {
        Some(author) => {
            Json(json!({ "instance": state.instance, "author": author })).into_response()
        }
        None => not_found(&format!("author {id}")),
    }
}

pub fn echo_router(instance: &'static str) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ws", get(websocket))
        .route("/status/{code}", get(status))
        .route("/delay/{ms}", get(delay))
        .route("/bytes/{n}", get(bytes))
        .route("/sink", axum::routing::post(sink).put(sink))
        .fallback(echo)
        .layer(axum::middleware::map_response_with_state(
            instance,
            tag_instance,
        ))
        .with_state(instance)
}

async fn echo(
    State(instance): State<&'static str>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: Request,
) -> Json<Value> {
    let version = format!("{:?}", request.version());
    let body = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Json(json!({
        "instance": instance,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "version": version,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn status(Path(code): Path<u16>) -> Response {
    StatusCode::from_u16(code)
        .map(|s| (s, format!("status {code}\n")).into_response())
        .unwrap_or_else(|_| StatusCode::BAD_REQUEST.into_response())
}

async fn delay(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    format!("waited {ms} ms\n")
}

/// Read the whole request body without keeping it; answer with its length (large uploads).
async fn sink(request: Request) -> String {
    use http_body_util::BodyExt;
    let mut body = request.into_body();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(err) => return format!("error after {total} bytes: {err}"),
        }
    }
    total.to_string()
}

/// `n` bytes, streamed in 64 KiB chunks (for large-download tests).
async fn bytes(Path(n): Path<u64>) -> Response {
    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(chunk.len() as u64);
            Some((
                Ok::<_, std::io::Error>(chunk.slice(..take as usize)),
                left - take,
            ))
        }
    });
    Response::new(Body::from_stream(stream))
}

async fn websocket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let reply = match message {
                Message::Text(text) => Message::Text(text),
                Message::Binary(data) => Message::Binary(data),
                Message::Close(frame) => {
                    // Complete the closing handshake before going away.
                    let _ = socket.send(Message::Close(frame)).await;
                    break;
                }
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// Serve a router on `addr` (port 0 picks a free port); returns the bound address.
pub async fn spawn(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, "demo upstream stopped");
        }
    });
    Ok(bound)
}

/// The addresses of the demo upstreams.
pub struct DemoUpstreams {
    pub catalog: [SocketAddr; 2],
    pub echo: [SocketAddr; 2],
}

/// Start two catalog and two echo instances on free loopback ports.
pub async fn start_upstreams() -> std::io::Result<DemoUpstreams> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let store = CatalogStore::seeded();
    Ok(DemoUpstreams {
        catalog: [
            spawn(catalog_router("catalog-1", store.clone()), any).await?,
            spawn(catalog_router("catalog-2", store), any).await?,
        ],
        echo: [
            spawn(echo_router("echo-1"), any).await?,
            spawn(echo_router("echo-2"), any).await?,
        ],
    })
}

/// Where the demo keeps its store and mail outbox (a fresh directory per run).
pub struct DemoPaths {
    pub store: std::path::PathBuf,
    pub outbox: std::path::PathBuf,
}

/// The demo's gateway configuration (`examples/demo.yaml` with the upstream ports filled in).
pub fn demo_config(
    upstreams: &DemoUpstreams,
    listen: SocketAddr,
    admin: SocketAddr,
    portal: SocketAddr,
    paths: &DemoPaths,
) -> String {
    include_str!("../../../examples/demo.yaml")
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9901", &admin.to_string())
        .replace("127.0.0.1:8081", &portal.to_string())
        .replace(
            "sqlite:gatehouse-demo.db",
            &format!("sqlite:{}", paths.store.display()),
        )
        .replace("gatehouse-demo-outbox", &paths.outbox.display().to_string())
        .replace("127.0.0.1:7001", &upstreams.catalog[0].to_string())
        .replace("127.0.0.1:7002", &upstreams.catalog[1].to_string())
        .replace("127.0.0.1:7101", &upstreams.echo[0].to_string())
        .replace("127.0.0.1:7102", &upstreams.echo[1].to_string())
}

/// The OpenAPI document of the catalog as the sample API product exposes it (under
/// `/partner`): the portal renders it, the sandbox mocks it.
pub fn catalog_openapi() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Book Catalog API", "version": "1.0",
                 "description": "Books and their authors. Call it with your application's key in `x-api-key`."},
        "paths": {
            "/partner/books": {
                "get": {"operationId": "listBooks", "summary": "Every book",
                        "responses": {"200": {"description": "The books", "content": {"application/json": {
                            "schema": {"type": "object", "required": ["books"], "properties": {
                                "books": {"type": "array", "items": {"$ref": "#/components/schemas/Book"}}}},
                            "example": {"books": [{"id": 1, "title": "Dune", "author_id": 1},
                                                  {"id": 2, "title": "Solaris", "author_id": 2}]}}}}}},
                "post": {"operationId": "addBook", "summary": "Add a book",
                         "requestBody": {"required": true, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/NewBook"},
                             "example": {"title": "Ubik", "author_id": 2}}}},
                         "responses": {"201": {"description": "Added", "content": {"application/json": {
                             "schema": {"type": "object", "properties": {"book": {"$ref": "#/components/schemas/Book"}}},
                             "example": {"book": {"id": 7, "title": "Ubik", "author_id": 2}}}}}}}
            },
            "/partner/books/{id}": {"get": {
                "operationId": "getBook", "summary": "One book",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                "responses": {
                    "200": {"description": "The book", "content": {"application/json": {
                        "schema": {"type": "object", "properties": {"book": {"$ref": "#/components/schemas/Book"}}},
                        "example": {"book": {"id": 1, "title": "Dune", "author_id": 1}}}}},
                    "404": {"description": "No such book"}}}},
            "/partner/authors": {"get": {
                "operationId": "listAuthors", "summary": "Every author",
                "responses": {"200": {"description": "The authors", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {"authors": {"type": "array", "items": {"$ref": "#/components/schemas/Author"}}}}}}}}}}
        },
        "components": {"schemas": {
            "Book": {"type": "object", "required": ["id", "title", "author_id"], "properties": {
                "id": {"type": "integer", "minimum": 1, "description": "The book's id"},
                "title": {"type": "string", "minLength": 1},
                "author_id": {"type": "integer", "minimum": 1}}},
            "NewBook": {"type": "object", "required": ["title", "author_id"], "properties": {
                "title": {"type": "string", "minLength": 1},
                "author_id": {"type": "integer", "minimum": 1}}},
            "Author": {"type": "object", "required": ["id", "name"], "properties": {
                "id": {"type": "integer"}, "name": {"type": "string", "example": "Frank Herbert"}}}
        }}
    })
}

/// Fills a fresh store with the sample API product: the catalog under `/partner`, with a
/// sandbox, a free plan and a paid plan that needs approval.
pub async fn seed_store(store: &gatehouse_store::Store) -> Result<(), gatehouse_store::StoreError> {
    use gatehouse_store::catalog::{
        Plan, PlanLimit, PlanQuota, PlanTerms, PriceTier, Pricing, Product, Sandbox, Visibility,
    };
    let product = Product {
        id: "catalog".to_owned(),
        name: "Book Catalog API".to_owned(),
        description: "Books and their authors, for partners.".to_owned(),
        openapi: Some(catalog_openapi()),
        routes: vec!["partner-api".to_owned()],
        version: "v1".to_owned(),
        visibility: Visibility::Public,
        sandbox: Some(Sandbox::default()),
        created_at: 0,
        updated_at: 0,
    };
    match store.create_product(&product).await {
        Ok(_) => {}
        Err(gatehouse_store::StoreError::Conflict(_)) => return Ok(()),
        Err(err) => return Err(err),
    }
    let limit = |requests, per_seconds| PlanLimit {
        requests,
        per_seconds,
        burst: None,
    };
    store
        .create_plan(
            "catalog",
            &Plan {
                id: "free".to_owned(),
                product_id: String::new(),
                name: "Free".to_owned(),
                description: "To build and try: 10 requests a minute, 1,000 a month.".to_owned(),
                terms: PlanTerms {
                    limits: vec![limit(10, 60)],
                    quota: Some(PlanQuota {
                        requests_per_month: 1000,
                        overage_cents_per_1000: None,
                    }),
                    pricing: Pricing::default(),
                },
                requires_approval: false,
                created_at: 0,
                updated_at: 0,
            },
        )
        .await?;
    store
        .create_plan(
            "catalog",
            &Plan {
                id: "pro".to_owned(),
                product_id: String::new(),
                name: "Pro".to_owned(),
                description: "For production; approved by the API team.".to_owned(),
                terms: PlanTerms {
                    limits: vec![limit(50, 1)],
                    quota: Some(PlanQuota {
                        requests_per_month: 1_000_000,
                        overage_cents_per_1000: Some(50),
                    }),
                    pricing: Pricing {
                        currency: "USD".to_owned(),
                        monthly_fee_cents: 4900,
                        tiers: vec![
                            PriceTier {
                                up_to: Some(100_000),
                                cents_per_1000: 0,
                            },
                            PriceTier {
                                up_to: None,
                                cents_per_1000: 20,
                            },
                        ],
                    },
                },
                requires_approval: true,
                created_at: 0,
                updated_at: 0,
            },
        )
        .await?;
    Ok(())
}
