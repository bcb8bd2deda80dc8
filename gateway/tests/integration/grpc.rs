//! gRPC (HTTP/2 with trailers) end to end through two gateways, to a tonic backend.

use std::pin::Pin;

use causeway_api::proto::config_client::ConfigClient;
use causeway_api::proto::config_server::{Config, ConfigServer};
use causeway_api::proto::{AckRequest, AckResponse, AppProtocol, ConfigSnapshot, GatewayHello};
use futures::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

use crate::support::*;

/// A backend speaking the config protocol's service, used here as any gRPC service.
struct Backend;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<ConfigSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Config for Backend {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<GatewayHello>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let hello = request.into_inner();
        let items: Vec<Result<ConfigSnapshot, Status>> = (1..=3)
            .map(|version| {
                Ok(ConfigSnapshot {
                    version,
                    cluster: hello.cluster.clone(),
                    ..Default::default()
                })
            })
            // The status after the messages travels in the trailers.
            .chain(std::iter::once(Err(Status::aborted("no more from west"))))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let req = request.into_inner();
        if req.version == 0 {
            return Err(Status::invalid_argument("version 0 is not a version"));
        }
        Ok(Response::new(AckResponse {}))
    }

    async fn certify(
        &self,
        _request: Request<causeway_api::proto::CertifyRequest>,
    ) -> Result<Response<causeway_api::proto::CertifyResponse>, Status> {
        Err(Status::unimplemented("no issuer here"))
    }
}

#[tokio::test]
async fn grpc_unary_and_streaming_with_trailers() {
    let mesh = Pair::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigServer::new(Backend))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    mesh.configure(
        1,
        &[("grpc", 50051, AppProtocol::Grpc, vec![backend_addr])],
        |_, _| {},
    );

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.east.egress_addr))
            .unwrap()
            .origin(
                "http://grpc.shop.svc.clusterset.local:50051"
                    .parse()
                    .unwrap(),
            )
            .connect()
            .await
            .unwrap();
    let mut client = ConfigClient::new(channel);

    client
        .ack(AckRequest {
            version: 7,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = client.ack(AckRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "version 0 is not a version");

    let mut stream = client
        .watch(GatewayHello {
            cluster: "east".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut versions = vec![];
    let status = loop {
        match stream.message().await {
            Ok(Some(s)) => {
                assert_eq!(s.cluster, "east");
                versions.push(s.version);
            }
            Ok(None) => panic!("stream ended without the status"),
            Err(status) => break status,
        }
    };
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "no more from west");
    server.abort();
}

/// The gateway's own errors reach a gRPC caller as gRPC statuses it can act on (not as
/// text/plain HTTP errors, which clients report as UNKNOWN/INTERNAL): an unknown service is
/// NOT_FOUND, a backend nobody answers at is UNAVAILABLE, each with the gateway's message.
#[tokio::test]
async fn gateway_errors_reach_grpc_callers_as_grpc_statuses() {
    let mesh = Pair::start().await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    mesh.configure(
        1,
        &[("grpc", 50051, AppProtocol::Grpc, vec![dead])],
        |_, _| {},
    );
    let call = |origin: &'static str| {
        let egress = mesh.east.egress_addr;
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{egress}"))
                .unwrap()
                .origin(origin.parse().unwrap())
                .connect()
                .await
                .unwrap();
            ConfigClient::new(channel)
                .ack(AckRequest {
                    version: 7,
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };
    let err = call("http://nosuch.shop.svc.clusterset.local:50051").await;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no imported service"), "{err:?}");
    let err = call("http://grpc.shop.svc.clusterset.local:50051").await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().is_empty(), "{err:?}");
    assert!(
        err.metadata().get("x-causeway-error").is_some(),
        "the gateway's error kind is kept: {err:?}"
    );
}
