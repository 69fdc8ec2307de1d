//! Peer network of the ledger group: single-node for now.
//!
//! A single-node group never sends a raft RPC (it is its own quorum), so
//! every RPC here answers `Unreachable`. The replicated-coordinator issue
//! replaces [`SingleNodeNetwork`] with a tonic client that dials
//! `BasicNode::addr` (each member's gRPC address, already stored in the
//! membership), keeping the rest of the raft layer as is.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::{NodeId, TypeConfig};

/// Network factory for a single-node group: peers are unreachable.
#[derive(Clone, Debug, Default)]
pub struct SingleNodeNetwork;

/// A "connection" to a peer that does not exist yet.
#[derive(Debug)]
pub struct UnreachablePeer {
    target: NodeId,
    addr: String,
}

impl UnreachablePeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let why = std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!(
                "raft peer {} at {:?}: the ledger group is single-node for now (no peer network)",
                self.target, self.addr
            ),
        );
        RPCError::Unreachable(Unreachable::new(&why))
    }
}

impl RaftNetworkFactory<TypeConfig> for SingleNodeNetwork {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        UnreachablePeer {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for UnreachablePeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
