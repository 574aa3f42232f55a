//! The library server on its own, for the gRPC benchmark (`scripts/bench-grpc.sh`):
//! `library-server [ADDR]`, by default on 127.0.0.1:50051. One thread, like the backend of
//! the peer benchmark.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let server = gatehouse_grpc_fixture::serve_on(&addr).await?;
    println!("library server on {}", server.addr);
    std::future::pending::<()>().await;
    Ok(())
}
