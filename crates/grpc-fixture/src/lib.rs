//! A real gRPC server for the gateway's gRPC tests and benchmarks: the annotated library
//! API of `proto/library/v1/library.proto` (every kind of call, HTTP bindings of each shape)
//! and the standard health service, served by tonic.
//!
//! The server records what a test needs to see from the far side of the gateway: the
//! metadata each call arrived with and how many calls the client abandoned.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

pub mod library {
    tonic::include_proto!("library.v1");
}

pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// The rich error model (`google.rpc.Status` and its detail messages).
pub mod rpc {
    tonic::include_proto!("google.rpc");
}

use health::health_check_response::ServingStatus;
use health::health_server::{Health, HealthServer};
use health::{HealthCheckRequest, HealthCheckResponse};
use library::library_service_server::{LibraryService, LibraryServiceServer};
use library::*;

/// The encoded `FileDescriptorSet` of the fixture's protos (library, health and
/// `google/api` annotations, with their imports).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The directory holding the fixture's `.proto` files (`library/v1/library.proto`, ...); their
/// `google/api` imports are built into the gateway.
pub const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

/// The shelf whose books take a minute to fetch: deadline tests read from it.
pub const SLOW_SHELF: &str = "shelves/slow";

/// What the server saw, for assertions from the client side of the gateway.
#[derive(Default)]
pub struct Observed {
    /// Metadata of every call, by method name (`GetBook`, ...), most recent last.
    metadata: Mutex<Vec<(&'static str, MetadataMap)>>,
    /// Calls that ended because the client went away (deadline or cancellation) before
    /// the server finished.
    abandoned: AtomicUsize,
    /// Health status per service name (`""` is the whole server); absent: `SERVICE_UNKNOWN`.
    health: Mutex<HashMap<String, ServingStatus>>,
}

impl Observed {
    /// The metadata the most recent call of `method` arrived with.
    pub fn last_metadata(&self, method: &str) -> Option<MetadataMap> {
        let seen = self.metadata.lock().ok()?;
        seen.iter()
            .rev()
            .find(|(name, _)| *name == method)
            .map(|(_, metadata)| metadata.clone())
    }

    pub fn calls(&self, method: &str) -> usize {
        self.metadata
            .lock()
            .map(|seen| seen.iter().filter(|(name, _)| *name == method).count())
            .unwrap_or(0)
    }

    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// What the health service answers for `service`.
    pub fn set_health(&self, service: &str, status: ServingStatus) {
        if let Ok(mut health) = self.health.lock() {
            health.insert(service.to_owned(), status);
        }
    }

    fn record<T>(&self, method: &'static str, request: &Request<T>) {
        if let Ok(mut seen) = self.metadata.lock() {
            seen.push((method, request.metadata().clone()));
        }
    }
}

/// Counts a call as abandoned when dropped before `finish`.
struct CallGuard {
    observed: Arc<Observed>,
    finished: bool,
}

impl CallGuard {
    fn new(observed: &Arc<Observed>) -> Self {
        Self {
            observed: observed.clone(),
            finished: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.observed.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The library: books by resource name (`shelves/{shelf}/books/{book}`).
pub struct Library {
    books: Mutex<BTreeMap<String, Book>>,
    observed: Arc<Observed>,
}

/// The books the library starts with.
pub fn seed_books() -> Vec<Book> {
    let book = |name: &str, title: &str, author: &str, pages: i64, genre: Genre| Book {
        name: name.to_owned(),
        title: title.to_owned(),
        author: author.to_owned(),
        page_count: pages,
        genre: genre as i32,
        publish_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        reading_time: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 500_000_000,
        }),
        edition: Some(2),
        metadata: None,
        tags: vec!["classic".to_owned()],
        archived: false,
        extra: None,
    };
    vec![
        book(
            "shelves/1/books/1",
            "Dune",
            "Frank Herbert",
            9_007_199_254_740_993,
            Genre::Fiction,
        ),
        book(
            "shelves/1/books/2",
            "Cosmos",
            "Carl Sagan",
            396,
            Genre::Science,
        ),
        book(
            "shelves/1/books/3",
            "Children of Dune",
            "Frank Herbert",
            444,
            Genre::Fiction,
        ),
        book(
            "shelves/2/books/4",
            "SPQR",
            "Mary Beard",
            608,
            Genre::History,
        ),
    ]
}

impl Library {
    pub fn new(observed: Arc<Observed>) -> Self {
        let books = seed_books()
            .into_iter()
            .map(|book| (book.name.clone(), book))
            .collect();
        Self {
            books: Mutex::new(books),
            observed,
        }
    }

    fn books(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Book>>, Status> {
        self.books
            .lock()
            .map_err(|_| Status::internal("library state poisoned"))
    }
}

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` detail naming the field.
fn invalid_field(field: &str, description: &str) -> Status {
    use prost::Message;
    let violation = rpc::BadRequest {
        field_violations: vec![rpc::bad_request::FieldViolation {
            field: field.to_owned(),
            description: description.to_owned(),
            ..Default::default()
        }],
    };
    let status = rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message: format!("{field} is {description}"),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".to_owned(),
            value: violation.encode_to_vec(),
        }],
    };
    Status::with_details(
        tonic::Code::InvalidArgument,
        status.message.clone(),
        status.encode_to_vec().into(),
    )
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("no book named `{name}`"))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<BookEvent, Status>> + Send>>;
type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl LibraryService for Library {
    async fn list_books(
        &self,
        request: Request<ListBooksRequest>,
    ) -> Result<Response<ListBooksResponse>, Status> {
        self.observed.record("ListBooks", &request);
        let request = request.into_inner();
        let prefix = format!("{}/books/", request.parent);
        let matching: Vec<Book> = self
            .books()?
            .values()
            .filter(|book| book.name.starts_with(&prefix))
            .filter(|book| request.author.is_empty() || book.author == request.author)
            .filter(|book| request.genre == 0 || book.genre == request.genre)
            .cloned()
            .collect();
        let start: usize = match request.page_token.as_str() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| Status::invalid_argument("malformed page_token"))?,
        };
        let size = match request.page_size {
            size if size <= 0 => 10,
            size => size as usize,
        };
        let end = (start + size).min(matching.len());
        Ok(Response::new(ListBooksResponse {
            books: matching.get(start..end).unwrap_or_default().to_vec(),
            next_page_token: if end < matching.len() {
                end.to_string()
            } else {
                String::new()
            },
            total_size: matching.len() as i64,
        }))
    }

    async fn get_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        self.observed.record("GetBook", &request);
        let request = request.into_inner();
        if request.name.starts_with(SLOW_SHELF) {
            let guard = CallGuard::new(&self.observed);
            tokio::time::sleep(Duration::from_secs(60)).await;
            guard.finish();
            return Err(not_found(&request.name));
        }
        let books = self.books()?;
        let found = if request.name.is_empty() {
            let suffix = format!("/books/{}", request.book_id);
            books.values().find(|book| book.name.ends_with(&suffix))
        } else {
            books.get(&request.name)
        };
        let mut response = found
            .cloned()
            .map(Response::new)
            .ok_or_else(|| not_found(&request.name))?;
        // Response metadata, so tests can see it come back.
        response.metadata_mut().insert(
            "x-served-by",
            tonic::metadata::MetadataValue::from_static("library"),
        );
        Ok(response)
    }

    async fn create_book(
        &self,
        request: Request<CreateBookRequest>,
    ) -> Result<Response<Book>, Status> {
        self.observed.record("CreateBook", &request);
        let request = request.into_inner();
        if request.book_id.is_empty() {
            return Err(invalid_field("book_id", "required"));
        }
        let mut book = request.book.unwrap_or_default();
        book.name = format!("{}/books/{}", request.parent, request.book_id);
        let mut books = self.books()?;
        if books.contains_key(&book.name) {
            return Err(Status::already_exists(format!("`{}` exists", book.name)));
        }
        books.insert(book.name.clone(), book.clone());
        Ok(Response::new(book))
    }

    async fn update_book(
        &self,
        request: Request<UpdateBookRequest>,
    ) -> Result<Response<Book>, Status> {
        self.observed.record("UpdateBook", &request);
        let request = request.into_inner();
        let update = request
            .book
            .ok_or_else(|| Status::invalid_argument("book is required"))?;
        let mut books = self.books()?;
        let current = books
            .get_mut(&update.name)
            .ok_or_else(|| not_found(&update.name))?;
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        if paths.is_empty() {
            *current = update;
        } else {
            for path in paths {
                match path.as_str() {
                    "title" => current.title = update.title.clone(),
                    "author" => current.author = update.author.clone(),
                    "page_count" => current.page_count = update.page_count,
                    "genre" => current.genre = update.genre,
                    "publish_time" => current.publish_time = update.publish_time,
                    "reading_time" => current.reading_time = update.reading_time,
                    "edition" => current.edition = update.edition,
                    "metadata" => current.metadata = update.metadata.clone(),
                    "tags" => current.tags = update.tags.clone(),
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "cannot update field `{other}`"
                        )))
                    }
                }
            }
        }
        Ok(Response::new(current.clone()))
    }

    async fn delete_book(
        &self,
        request: Request<DeleteBookRequest>,
    ) -> Result<Response<()>, Status> {
        self.observed.record("DeleteBook", &request);
        let name = request.into_inner().name;
        match self.books()?.remove(&name) {
            Some(_) => Ok(Response::new(())),
            None => Err(not_found(&name)),
        }
    }

    async fn archive_book(
        &self,
        request: Request<ArchiveBookRequest>,
    ) -> Result<Response<Book>, Status> {
        self.observed.record("ArchiveBook", &request);
        let name = request.into_inner().name;
        let mut books = self.books()?;
        let book = books.get_mut(&name).ok_or_else(|| not_found(&name))?;
        book.archived = true;
        Ok(Response::new(book.clone()))
    }

    type WatchShelfStream = EventStream;

    async fn watch_shelf(
        &self,
        request: Request<WatchShelfRequest>,
    ) -> Result<Response<Self::WatchShelfStream>, Status> {
        self.observed.record("WatchShelf", &request);
        let request = request.into_inner();
        let prefix = format!("{}/books/", request.shelf);
        let existing: Vec<Book> = self
            .books()?
            .values()
            .filter(|book| book.name.starts_with(&prefix))
            .cloned()
            .collect();
        let (sender, receiver) = mpsc::channel(4);
        let guard = CallGuard::new(&self.observed);
        tokio::spawn(async move {
            let mut sequence = 0;
            for book in existing {
                sequence += 1;
                let event = BookEvent {
                    kind: "existing".to_owned(),
                    book: Some(book),
                    sequence,
                };
                if sender.send(Ok(event)).await.is_err() {
                    return; // the guard counts the abandoned call
                }
            }
            if request.limit < 0 {
                // A failure after the first messages: the status arrives in trailers.
                let failure = Status::out_of_range("limit must not be negative");
                if sender.send(Err(failure)).await.is_ok() {
                    guard.finish();
                }
                return;
            }
            let mut ticks = 0;
            while request.limit == 0 || ticks < request.limit {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = sender.closed() => return,
                }
                ticks += 1;
                sequence += 1;
                let event = BookEvent {
                    kind: "tick".to_owned(),
                    book: None,
                    sequence,
                };
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            guard.finish();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn import_books(
        &self,
        request: Request<Streaming<Book>>,
    ) -> Result<Response<ImportSummary>, Status> {
        self.observed.record("ImportBooks", &request);
        let mut stream = request.into_inner();
        let mut summary = ImportSummary::default();
        let guard = CallGuard::new(&self.observed);
        while let Some(book) = stream.next().await {
            let book = book?;
            summary.imported += 1;
            summary.total_pages += book.page_count;
            self.books()?.insert(book.name.clone(), book);
        }
        guard.finish();
        Ok(Response::new(summary))
    }

    type ChatStream = ChatStream;

    async fn chat(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.observed.record("Chat", &request);
        let mut inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(4);
        let guard = CallGuard::new(&self.observed);
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let reply = message.map(|message| ChatMessage {
                    text: format!("echo: {}", message.text),
                    sequence: message.sequence,
                });
                if sender.send(reply).await.is_err() {
                    return;
                }
            }
            guard.finish();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// The standard health service, answering from [`Observed::set_health`].
pub struct HealthService {
    observed: Arc<Observed>,
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.observed.record("Check", &request);
        let service = request.into_inner().service;
        let status = self
            .observed
            .health
            .lock()
            .map_err(|_| Status::internal("health state poisoned"))?
            .get(&service)
            .copied();
        match status {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })),
            None => Err(Status::not_found(format!("unknown service `{service}`"))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not served by the fixture"))
    }
}

/// A running fixture server.
pub struct Server {
    pub addr: SocketAddr,
    pub observed: Arc<Observed>,
}

/// Serves the library and health services over h2c on a free loopback port until the
/// runtime ends. The health service reports `SERVING` for `""` and
/// `library.v1.LibraryService`.
pub async fn serve() -> std::io::Result<Server> {
    serve_on("127.0.0.1:0").await
}

/// [`serve`] on `addr`.
pub async fn serve_on(addr: &str) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let observed = Arc::new(Observed::default());
    observed.set_health("", ServingStatus::Serving);
    observed.set_health("library.v1.LibraryService", ServingStatus::Serving);
    let library = LibraryServiceServer::new(Library::new(observed.clone()));
    let health = HealthServer::new(HealthService {
        observed: observed.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(library)
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(Server { addr, observed })
}
