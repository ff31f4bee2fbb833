"""One thin adapter per RL framework, each matching that framework's own contract.

- `rlme.client.adapters.trl`: `RLMERewardFunc`, `async_reward_func` for `reward_funcs=`.
- `rlme.client.adapters.verl`: `compute_score`, `compute_score_batch`, `compute_score_async`
  for `reward.custom_reward_function.path=pkg://rlme.client.adapters.verl` (verl 0.9).
- `rlme.client.adapters.slime`: `reward_func`, `batched_reward_func` for `--custom-rm-path`;
  `masked_reward_func` + `drop_failed` (`--rollout-sample-filter-path`) to drop failed samples.
- `rlme.client.adapters.nemo_gym`: a NeMo Gym resources server (`python -m ...`).
- `rlme.client.adapters.verifiers`: `reward`, `judgment`, `preference` for a verifiers v1 Task.
- `rlme.client.adapters.areal`: `reward_fn` for AReaL's `AsyncRewardWrapper`.
- `rlme.client.adapters.roll`: `RLMERewardWorker`, a ROLL reward worker.

OpenRLHF needs no client code: point `--reward.remote_url` (OpenRLHF >= 0.10.2) at `/get_reward`.
Nothing here imports the frameworks themselves.
"""
