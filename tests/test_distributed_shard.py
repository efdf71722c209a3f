"""How torchrun's processes split the calibration: contiguous shares of samples, refused below one per process."""

import pytest
import torch

from depthprune.errors import DepthpruneError
from depthprune.importance.distributed import shard, shard_sizes
from depthprune.io.data import from_tensors


@pytest.mark.parametrize("samples, world, sizes", [(5, 2, [3, 2]), (8, 3, [3, 3, 2]), (2, 2, [1, 1]),
                                                   (8, 2, [4, 4]), (7, 7, [1] * 7)])
def test_shard_sizes_even_with_the_remainder_first(samples, world, sizes):
    assert shard_sizes(samples, world) == sizes


def test_shards_are_contiguous_and_cover_every_sample_once():
    ids = torch.arange(7 * 4).reshape(7, 4)
    mask = torch.ones_like(ids)
    mask[6, 2:] = 0  # a padded last window: its tokens go with its sample
    calibration = from_tensors(ids, mask)
    parts = [shard(calibration, rank, 3) for rank in range(3)]
    assert all(counts == [3, 2, 2] for _, counts in parts)
    assert torch.equal(torch.cat([p.input_ids for p, _ in parts]), ids)
    assert torch.equal(torch.cat([p.attention_mask for p, _ in parts]), mask)
    assert sum(p.num_tokens for p, _ in parts) == calibration.num_tokens
    # each share is batched on its own: 3 samples in batches of 2 make a full batch and a smaller last one
    assert [len(b[0]) for b in parts[0][0].batches(2)] == [2, 1]


def test_fewer_samples_than_processes_refused_with_the_count_needed():
    calibration = from_tensors(torch.arange(8).reshape(2, 4))
    with pytest.raises(DepthpruneError) as err:
        shard(calibration, 0, 3)
    assert str(err.value) == ("3 processes need at least 3 calibration samples (one per process) but the "
                              "calibration set has 2: use --samples 3 or more, or start fewer processes")
