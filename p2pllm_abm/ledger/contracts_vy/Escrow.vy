# pragma version ~=0.4.3
"""
@title SLA escrow (p2pllm_abm.ledger.contracts, paper section 4.2)
@notice One job per request hop. The client locks the hop's price; the SLA oracle (the operator,
        which measured the delivered time) settles it once: to the provider (release) or back to
        the client (refund). Nothing else can move the money.
"""

struct Job:
    client: address
    provider: address
    amount: uint256
    status: uint8  # 0 none, 1 open, 2 released, 3 refunded

operator: public(address)
jobs: public(HashMap[uint256, Job])
total_escrowed: public(uint256)


@deploy
def __init__():
    self.operator = msg.sender


@external
@payable
def open(jid: uint256, provider: address):
    assert self.jobs[jid].status == 0, "job exists"
    self.jobs[jid] = Job(client=msg.sender, provider=provider, amount=msg.value, status=1)
    self.total_escrowed += msg.value


@external
def settle(jid: uint256, release: bool):
    assert msg.sender == self.operator, "not operator"
    job: Job = self.jobs[jid]
    assert job.status == 1, "not open"
    self.total_escrowed -= job.amount
    if release:
        self.jobs[jid].status = 2
        send(job.provider, job.amount)
    else:
        self.jobs[jid].status = 3
        send(job.client, job.amount)
