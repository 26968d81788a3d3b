# pragma version ~=0.4.3
"""
@title Client-peer payment channels (p2pllm_abm.ledger.channels, paper section 4.2)
@notice Deposits, cooperative close, unilateral close with a challenge window, and the penalty
        for publishing a stale state. Co-signatures on states are checked by the operator before it
        calls (stub or Ed25519, which the EVM has no precompile for); this contract enforces the
        rest: status transitions, balances that sum to the deposit, newer nonces, the window.
"""

struct Channel:
    client: address
    peer: address
    deposit: uint256
    status: uint8  # 0 none, 1 open, 2 closing, 3 settled
    nonce: uint256
    bal_client: uint256
    bal_peer: uint256
    deadline: uint256
    closer_is_client: bool

PENALTY_DENOMINATOR: constant(uint256) = 1000000

operator: public(address)
window: public(uint256)
penalty_ppm: public(uint256)
channels: public(HashMap[uint256, Channel])


@deploy
def __init__(window: uint256, penalty_ppm: uint256):
    self.operator = msg.sender
    self.window = window
    self.penalty_ppm = penalty_ppm


@external
@payable
def open(cid: uint256, peer: address):
    assert self.channels[cid].status == 0, "channel exists"
    self.channels[cid] = Channel(client=msg.sender, peer=peer, deposit=msg.value, status=1, nonce=0,
                                 bal_client=msg.value, bal_peer=0, deadline=0, closer_is_client=False)


@internal
def _pay(cid: uint256, to_client: uint256, to_peer: uint256):
    ch: Channel = self.channels[cid]
    self.channels[cid].status = 3
    if to_client > 0:
        send(ch.client, to_client)
    if to_peer > 0:
        send(ch.peer, to_peer)


@internal
def _check(cid: uint256, status: uint8, bal_client: uint256, bal_peer: uint256):
    assert msg.sender == self.operator, "not operator"
    assert self.channels[cid].status == status, "wrong status"
    assert bal_client + bal_peer == self.channels[cid].deposit, "not conserved"


@external
def close(cid: uint256, nonce: uint256, bal_client: uint256, bal_peer: uint256):
    self._check(cid, 1, bal_client, bal_peer)
    self._pay(cid, bal_client, bal_peer)


@external
def close_unilateral(cid: uint256, nonce: uint256, bal_client: uint256, bal_peer: uint256, closer_is_client: bool):
    self._check(cid, 1, bal_client, bal_peer)
    self.channels[cid].status = 2
    self.channels[cid].nonce = nonce
    self.channels[cid].bal_client = bal_client
    self.channels[cid].bal_peer = bal_peer
    self.channels[cid].deadline = block.number + self.window
    self.channels[cid].closer_is_client = closer_is_client


@external
def challenge(cid: uint256, nonce: uint256, bal_client: uint256, bal_peer: uint256):
    self._check(cid, 2, bal_client, bal_peer)
    ch: Channel = self.channels[cid]
    assert block.number <= ch.deadline, "too late"
    assert nonce > ch.nonce, "not newer"
    if ch.closer_is_client:
        penalty: uint256 = bal_client * self.penalty_ppm // PENALTY_DENOMINATOR
        self._pay(cid, bal_client - penalty, bal_peer + penalty)
    else:
        penalty: uint256 = bal_peer * self.penalty_ppm // PENALTY_DENOMINATOR
        self._pay(cid, bal_client + penalty, bal_peer - penalty)


@external
def finalize(cid: uint256):
    assert msg.sender == self.operator, "not operator"
    ch: Channel = self.channels[cid]
    assert ch.status == 2, "wrong status"
    assert block.number > ch.deadline, "wait"
    self._pay(cid, ch.bal_client, ch.bal_peer)
