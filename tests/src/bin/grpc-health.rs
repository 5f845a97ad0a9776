//! `grpc-health ADDR STATUS_FILE`: a `grpc.health.v1` server for the gRPC probe tests. Each `Check`
//! answers what STATUS_FILE holds (`SERVING`, `NOT_SERVING`, …; a missing file is `UNKNOWN`), so a
//! test flips a probe by writing the file. It stops by itself after two minutes.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use skiff_proto::health::v1::health_check_response::ServingStatus;
use skiff_proto::health::v1::health_server::{Health, HealthServer};
use skiff_proto::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

#[derive(Debug)]
struct FromFile(PathBuf);

#[tonic::async_trait]
impl Health for FromFile {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let status = ServingStatus::from_str_name(text.trim()).unwrap_or(ServingStatus::Unknown);
        Ok(Response::new(HealthCheckResponse {
            status: status.into(),
        }))
    }

    type WatchStream =
        Pin<Box<dyn futures::Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("only Check is served"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(file)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: grpc-health ADDR STATUS_FILE");
    };
    let server = tonic::transport::Server::builder()
        .add_service(HealthServer::new(FromFile(file.into())))
        .serve(addr.parse()?);
    match tokio::time::timeout(Duration::from_secs(120), server).await {
        Ok(served) => Ok(served?),
        Err(_) => Ok(()),
    }
}
