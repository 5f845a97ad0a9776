//! Raft transport over tonic: the client side (one per peer) and the gRPC service.

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use skiff_proto::raft::v1::RaftPayload;
use skiff_proto::raft::v1::raft_service_client::RaftServiceClient;
use skiff_proto::raft::v1::raft_service_server::RaftService;
use tonic::transport::Channel;

use super::types::{NodeId, Raft, TypeConfig, decode, encode};

/// Creates a client per peer.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: None,
        }
    }
}

/// A lazily connected client for one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn client<E: std::error::Error>(&mut self) -> Result<RaftServiceClient<Channel>, RpcErr<E>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Channel::from_shared(format!("http://{}", self.addr))
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let client = RaftServiceClient::new(channel);
        self.client = Some(client.clone());
        Ok(client)
    }

    fn decode_reply<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        reply: Result<tonic::Response<RaftPayload>, tonic::Status>,
    ) -> Result<T, RpcErr<E>> {
        let payload = reply.map_err(|s| {
            tracing::debug!(target = self.target, status = %s, "raft rpc failed");
            RPCError::Unreachable(Unreachable::new(&s))
        })?;
        let result: Result<T, RaftError<NodeId, E>> =
            decode(&payload.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let mut client = self.client().await?;
        let reply = client.append_entries(RaftPayload { data: encode(&rpc) }).await;
        if reply.is_err() {
            self.client = None;
        }
        self.decode_reply(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut client = self.client().await?;
        let reply = client.install_snapshot(RaftPayload { data: encode(&rpc) }).await;
        if reply.is_err() {
            self.client = None;
        }
        self.decode_reply(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let mut client = self.client().await?;
        let reply = client.vote(RaftPayload { data: encode(&rpc) }).await;
        if reply.is_err() {
            self.client = None;
        }
        self.decode_reply(reply)
    }
}

/// The gRPC service that feeds peers' RPCs into the local Raft node.
#[derive(Clone)]
pub struct RaftGrpc {
    pub(crate) raft: Raft,
}

impl std::fmt::Debug for RaftGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGrpc").finish_non_exhaustive()
    }
}

fn bad_request(e: postcard::Error) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&request.into_inner().data).map_err(bad_request)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(tonic::Response::new(RaftPayload {
            data: encode(&result),
        }))
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(&request.into_inner().data).map_err(bad_request)?;
        let result = self.raft.vote(rpc).await;
        Ok(tonic::Response::new(RaftPayload {
            data: encode(&result),
        }))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode(&request.into_inner().data).map_err(bad_request)?;
        let result = self.raft.install_snapshot(rpc).await;
        Ok(tonic::Response::new(RaftPayload {
            data: encode(&result),
        }))
    }
}
