//! HTTP/JSON to gRPC transcoding through the real binary, against the real tonic library
//! server of `gatehouse-grpc-fixture`: every binding of its annotated proto (compiled by
//! the gateway at load time), checked field by field.

mod common;

use std::net::SocketAddr;

use common::{check_text, client, Gateway};
use gatehouse_grpc_fixture::{serve, PROTO_DIR};
use serde_json::{json, Value};

fn config(library: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: library
    protocol: http2
    endpoints: [{{ address: "{library}" }}]
protos:
  library:
    files: [library/v1/library.proto]
    include_paths: ["{PROTO_DIR}"]
routes:
  # The same API with the other printing options and server-sent events.
  - name: library-raw
    match: {{ hosts: [raw.example], path: {{ prefix: /v1/ }} }}
    service: library
    grpc_transcode:
      protos: library
      services: [library.v1.LibraryService]
      emit_defaults: true
      proto_field_names: true
      enums_as_numbers: true
      streaming: sse
  - name: library-json
    match: {{ path: {{ prefix: /v1/ }} }}
    service: library
    grpc_transcode:
      protos: library
"#
    )
}

async fn call(
    gateway: &Gateway,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut request = client().request(method.parse().unwrap(), gateway.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, value)
}

#[tokio::test]
async fn every_binding_is_transcoded_with_the_canonical_json_mapping() {
    let server = serve().await.unwrap();
    let gateway = Gateway::start(&config(server.addr));

    // GET with a nested resource in the path; unbound query parameters (camelCase or
    // snake_case) filter and paginate.
    let (status, content_type, listed) = call(
        &gateway,
        "GET",
        "/v1/shelves/1/books?pageSize=1&author=Frank%20Herbert",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(content_type, "application/json");
    assert_eq!(
        listed,
        json!({
            "books": [{
                "name": "shelves/1/books/1",
                "title": "Dune",
                "author": "Frank Herbert",
                "pageCount": "9007199254740993",
                "genre": "FICTION",
                "publishTime": "2023-11-14T22:13:20Z",
                "readingTime": "3600.500s",
                "edition": 2,
                "tags": ["classic"],
            }],
            "nextPageToken": "1",
            "totalSize": "2",
        })
    );
    let (_, _, page_two) = call(
        &gateway,
        "GET",
        "/v1/shelves/1/books?page_size=1&page_token=1&author=Frank%20Herbert",
        None,
    )
    .await;
    assert_eq!(page_two["books"][0]["title"], "Children of Dune");
    assert!(page_two.get("nextPageToken").is_none(), "{page_two}");
    let (_, _, science) = call(&gateway, "GET", "/v1/shelves/1/books?genre=SCIENCE", None).await;
    assert_eq!(science["books"].as_array().unwrap().len(), 1);
    assert_eq!(science["books"][0]["title"], "Cosmos");

    // GET by name, and by the additional binding. The response metadata comes back as
    // headers.
    let response = client()
        .get(gateway.url("/v1/shelves/1/books/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "library");
    let book: Value = response.json().await.unwrap();
    assert_eq!(book["title"], "Cosmos");
    let (status, _, book) = call(&gateway, "GET", "/v1/books/4", None).await;
    assert_eq!(
        (status, book["name"].as_str()),
        (200, Some("shelves/2/books/4"))
    );

    // POST with `body: "book"`; `bookId` comes from the query.
    let (status, _, created) = call(
        &gateway,
        "POST",
        "/v1/shelves/1/books?bookId=new",
        Some(json!({
            "title": "New",
            "author": "A. Writer",
            "pageCount": "120",
            "genre": "HISTORY",
            "publishTime": "2024-02-29T12:00:00.250Z",
            "readingTime": "90s",
            "edition": 3,
            "metadata": {"shelfLife": [1, "x", true, null], "nested": {"k": 1.5}},
            "tags": ["a", "b"],
            "extra": {
                "@type": "type.googleapis.com/library.v1.ChatMessage",
                "text": "hello",
                "sequence": 7,
            },
        })),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["name"], "shelves/1/books/new");
    assert_eq!(created["pageCount"], "120");
    assert_eq!(created["genre"], "HISTORY");
    assert_eq!(created["publishTime"], "2024-02-29T12:00:00.250Z");
    assert_eq!(created["readingTime"], "90s");
    assert_eq!(created["edition"], 3);
    assert_eq!(
        created["metadata"],
        json!({"shelfLife": [1.0, "x", true, null], "nested": {"k": 1.5}})
    );
    assert_eq!(created["tags"], json!(["a", "b"]));
    // `Any` resolved through the descriptors, both ways.
    assert_eq!(
        created["extra"],
        json!({"@type": "type.googleapis.com/library.v1.ChatMessage", "text": "hello", "sequence": 7})
    );
    let seen = server.observed.last_metadata("CreateBook").unwrap();
    assert_eq!(seen.get("content-type").unwrap(), "application/grpc");

    // PATCH with a field mask from the query: only the named fields change.
    let (status, _, updated) = call(
        &gateway,
        "PATCH",
        "/v1/shelves/1/books/new?updateMask=title,pageCount",
        Some(json!({"title": "Renamed", "pageCount": "121", "author": "Someone Else"})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["title"], "Renamed");
    assert_eq!(updated["pageCount"], "121");
    assert_eq!(updated["author"], "A. Writer");

    // A custom verb with `body: "*"` and `response_body`: the title alone.
    let (status, _, title) = call(
        &gateway,
        "POST",
        "/v1/shelves/1/books/new:archive",
        Some(json!({"reason": "superseded"})),
    )
    .await;
    assert_eq!((status, title), (200, json!("Renamed")));

    // DELETE answers google.protobuf.Empty; a second time, NOT_FOUND as HTTP 404 with the
    // google.rpc.Status as the body.
    let (status, _, deleted) = call(&gateway, "DELETE", "/v1/shelves/1/books/new", None).await;
    assert_eq!((status, deleted), (200, json!({})));
    let (status, content_type, missing) =
        call(&gateway, "DELETE", "/v1/shelves/1/books/new", None).await;
    assert_eq!(status, 404);
    assert_eq!(content_type, "application/json");
    assert_eq!(
        missing,
        json!({"code": 5, "message": "no book named `shelves/1/books/new`", "details": []})
    );

    // Error details pass through, rendered through the descriptors by type.
    let (status, _, invalid) = call(
        &gateway,
        "POST",
        "/v1/shelves/1/books",
        Some(json!({"title": "x"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        invalid,
        json!({
            "code": 3,
            "message": "book_id is required",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "book_id", "description": "required"}],
            }],
        })
    );
}

#[tokio::test]
async fn server_streaming_methods_stream_ndjson_or_events() {
    let server = serve().await.unwrap();
    let gateway = Gateway::start(&config(server.addr));

    let response = client()
        .get(gateway.url("/v1/shelves/2:watch?limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["kind"], "existing");
    assert_eq!(lines[0]["book"]["title"], "SPQR");
    assert_eq!(lines[0]["sequence"], "1");
    assert_eq!(lines[2], json!({"kind": "tick", "sequence": "3"}));

    // A failure after the first message: the status is the last line.
    let response = client()
        .get(gateway.url("/v1/shelves/2:watch?limit=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["book"]["title"], "SPQR");
    assert_eq!(
        lines[1],
        json!({"error": {"code": 11, "message": "limit must not be negative", "details": []}})
    );

    // The other route: server-sent events, proto field names, defaults and enum numbers.
    let response = client()
        .get(gateway.url("/v1/shelves/2:watch?limit=1"))
        .header("host", "raw.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    let book = &events[0]["book"];
    assert_eq!(book["page_count"], "608");
    assert_eq!(book["genre"], 3);
    assert_eq!(book["archived"], false);
    assert_eq!(events[1]["book"], Value::Null);
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_upstream() {
    let server = serve().await.unwrap();
    let gateway = Gateway::start(&config(server.addr));
    let post = |body: &'static str| {
        client()
            .post(gateway.url("/v1/shelves/1/books?bookId=x"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, expected) in [
        ("{not json", "not valid JSON"),
        (r#"{"title": 5}"#, "does not fit"),
        (r#"{"unknownField": 1}"#, "does not fit"),
    ] {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "transcode_failed");
        assert!(
            problem["detail"].as_str().unwrap().contains(expected),
            "{body}: {problem}"
        );
    }
    let (status, _, problem) = call(&gateway, "GET", "/v1/shelves/1/books?colour=red", None).await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"].as_str().unwrap().contains("colour"),
        "{problem}"
    );
    let (status, _, problem) =
        call(&gateway, "GET", "/v1/shelves/1/books?pageSize=many", None).await;
    assert_eq!(status, 400, "{problem}");
    let (status, _, problem) = call(&gateway, "GET", "/v1/unbound/path", None).await;
    assert_eq!(status, 404);
    assert_eq!(problem["code"], "route_not_found");
    assert_eq!(server.observed.calls("CreateBook"), 0);
    assert_eq!(server.observed.calls("ListBooks"), 0);
}

#[test]
fn broken_protos_and_bindings_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.proto"),
        "syntax = \"proto3\";\npackage broken;\nmessage M {\n  string name = ;\n}\n",
    )
    .unwrap();
    let (code, text) = check_text(&format!(
        r#"services:
  - name: library
    protocol: http2
    endpoints: [{{ address: "127.0.0.1:1" }}]
protos:
  broken:
    files: [broken.proto]
    include_paths: ["{}"]
routes:
  - service: library
    grpc_transcode: {{ protos: broken }}
"#,
        dir.path().display()
    ));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("bad.yaml:7:13: protos `broken`: broken.proto:4:17: "),
        "{text}"
    );

    let (code, text) = check_text(&format!(
        r#"services:
  - name: library
    endpoints: [{{ address: "127.0.0.1:1" }}]
protos:
  library:
    files: [library/v1/library.proto]
    include_paths: ["{PROTO_DIR}"]
routes:
  - service: library
    grpc_transcode: {{ protos: library, services: [library.v1.Missing] }}
  - service: library
    grpc_transcode: {{ protos: libary }}
"#
    ));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("needs service `library` to use `protocol: http2`"),
        "{text}"
    );
    assert!(
        text.contains("undefined protos `libary`, did you mean `library`?"),
        "{text}"
    );
}

#[tokio::test]
async fn a_compiled_descriptor_set_works_like_proto_files() {
    let server = serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("library.pb"),
        gatehouse_grpc_fixture::DESCRIPTOR_SET,
    )
    .unwrap();
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: library
    protocol: http2
    endpoints: [{{ address: "{}" }}]
protos:
  library:
    descriptor_set: "{}"
routes:
  - service: library
    grpc_transcode: {{ protos: library }}
"#,
        server.addr,
        dir.path().join("library.pb").display()
    ));
    let (status, _, book) = call(&gateway, "GET", "/v1/books/2", None).await;
    assert_eq!((status, book["title"].as_str()), (200, Some("Cosmos")));
    let (status, _, missing) = call(&gateway, "GET", "/v1/books/99", None).await;
    assert_eq!((status, missing["code"].as_i64()), (404, Some(5)));
}
