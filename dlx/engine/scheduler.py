"""Scheduler: admits waiting requests (count, token budget, free KV pages), batches every running request
into one ragged forward per step, preempts the newest when pages run out, settles requests after the step."""
from collections import deque

from dlx.engine.kv_manager import KVCacheManager, chain_hash
from dlx.engine.request import Request, Status
from dlx.engine.strategy import DecodingStrategy, StepPlan


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_reqs: int, max_num_batched_tokens: int,
                 strategy: DecodingStrategy):
        self.kv, self.strategy = kv, strategy
        self.max_num_reqs, self.token_budget = max_num_reqs, max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.plans: dict[str, StepPlan] = {}
        self.admitted: list[Request] = []   # requests this step moves from waiting to running (their prefill)
        self.num_preemptions = 0
        self.prefix_hit_tokens = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, rid: str) -> Request | None:
        for req in list(self.waiting) + self.running:
            if req.rid == rid:
                if req in self.waiting:
                    self.waiting.remove(req)
                else:
                    self.running.remove(req)
                self.release(req)
                req.finish("abort", req.generated()[:self.strategy.stable_len(req)])
                return req
        return None

    def schedule(self) -> list[Request]:
        """Choose this step's batch; every chosen request has its pages and a StepPlan."""
        self.plans.clear()
        self.admitted = []
        batch, budget = [], self.token_budget
        for req in list(self.running):
            if req not in self.running:
                continue  # preempted while making room for an older request
            plan = self.strategy.plan(req)
            if plan.end - plan.start > budget:
                self.strategy.cancel(req, plan)
                continue
            if not self.reserve_pages(req, plan, batch):
                continue
            batch.append(req)
            self.plans[req.rid] = plan
            budget -= plan.end - plan.start
        while self.waiting and len(self.running) < self.max_num_reqs:
            req = self.waiting[0]
            if req.admit_alone and self.admitted:
                break   # it waits for a step of its own, so that a death in its prefill is blamed on it alone
            if not req.pages:
                req.pages, req.page_hashes = self.kv.match_prefix(req.tokens, self.strategy.reusable_prefix_len(req))
                req.stored = len(req.pages) * self.kv.page_size
                self.prefix_hit_tokens += req.stored
            plan = self.strategy.plan(req)
            # The budget first: pages taken and given back would go to the end of the free list, ahead of the
            # cached prefixes they were taken in front of, and so evict those early.
            pages = self.kv.allocate(self.pages_needed(req, plan)) if plan.end - plan.start <= budget else None
            if pages is None:
                self.strategy.cancel(req, plan)
                break   # first come, first served: no overtaking
            req.pages += pages
            self.waiting.popleft()
            self.running.append(req)
            req.status = Status.RUNNING
            batch.append(req)
            self.plans[req.rid] = plan
            budget -= plan.end - plan.start
            self.admitted.append(req)
            if req.admit_alone:
                break
        return batch

    def pages_needed(self, req: Request, plan: StepPlan) -> int:
        return max(0, -(-plan.store_end // self.kv.page_size) - len(req.pages))

    def reserve_pages(self, req: Request, plan: StepPlan, batch: list[Request]) -> bool:
        """Allocate the pages this step stores into, preempting the newest running requests if needed."""
        need = self.pages_needed(req, plan)
        while (pages := self.kv.allocate(need)) is None:
            victim = self.running[-1]
            self.preempt(victim, batch)
            if victim is req:
                return False
        req.pages += pages
        return True

    def preempt(self, req: Request, batch: list[Request]) -> None:
        """Give back the pages; decoded tokens stay and the request resumes first in line."""
        self.running.remove(req)
        if req in batch:
            batch.remove(req)
        plan = self.plans.pop(req.rid, None)
        if plan is not None:
            self.strategy.cancel(req, plan)
        self.release(req)
        req.status = Status.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def release(self, req: Request) -> None:
        self.kv.free(req.pages)
        req.pages, req.page_hashes, req.stored = [], [], 0

    def postprocess(self, batch: list[Request]) -> list[Request]:
        """After the step's commits: record stored KV, register full pages, finish; returns finished."""
        finished = []
        for req in batch:
            req.stored = self.plans[req.rid].store_end
            self.register_full_pages(req)
            req.nfe += 1
            if self.strategy.finished(req):
                self.running.remove(req)
                self.release(req)
                finished.append(req)
        return finished

    def register_full_pages(self, req: Request) -> None:
        size = self.kv.page_size
        while (len(req.page_hashes) + 1) * size <= req.stored:
            i = len(req.page_hashes)
            digest = chain_hash(req.page_hashes[-1] if req.page_hashes else None, req.tokens[i * size:(i + 1) * size])
            self.kv.register(req.pages[i], digest)
            req.page_hashes.append(digest)
