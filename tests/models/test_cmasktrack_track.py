"""Track head targets/loss and the inference matching on constructed cases."""
from __future__ import annotations

import math

import torch

from amodal.models.cmasktrack.track_head import (
    MatchWeights,
    TrackHead,
    TrackMemory,
    match_tracks,
    matching_scores,
    occlusion_levels,
    track_loss,
    track_scores,
    track_targets,
    update_memory,
)


def _memory(embeddings, boxes, labels, ids, next_id) -> TrackMemory:
    n = len(ids)
    return TrackMemory(torch.tensor(ids), torch.tensor(embeddings, dtype=torch.float32),
                       torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), torch.zeros(n, dtype=torch.int64),
                       torch.full((n,), 100.0), next_id)


def _dets(embeddings, boxes, labels, scores):
    return (torch.tensor(embeddings, dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32),
            torch.tensor(labels), torch.tensor(scores))


def test_scores_and_targets():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    mem = torch.tensor([[3.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    s = track_scores(x, mem)
    assert s.shape == (2, 4)
    torch.testing.assert_close(s[:, 0], torch.zeros(2))
    torch.testing.assert_close(s[:, 1:], x @ mem.t())
    assert track_targets(torch.tensor([5, 9, 7]), torch.tensor([7, 5])).tolist() == [2, 0, 1]
    assert track_targets(torch.tensor([5]), torch.tensor([], dtype=torch.int64)).tolist() == [0]


def test_track_loss_is_cross_entropy_over_new_column_and_reference():
    logits = [torch.tensor([[0.0, 2.0, -1.0]]), torch.zeros(0, 2), torch.tensor([[0.0, 1.0], [0.0, -3.0]])]
    targets = [torch.tensor([1]), torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0])]
    expected = (-torch.log_softmax(logits[0], 1)[0, 1] - torch.log_softmax(logits[2], 1)[0, 0]
                - torch.log_softmax(logits[2], 1)[1, 0]) / 3
    torch.testing.assert_close(track_loss(logits, targets), expected)
    empty = track_loss([torch.zeros(0, 3, requires_grad=True)], [torch.zeros(0, dtype=torch.int64)])
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_track_head_embeds_each_box():
    head = TrackHead(in_channels=4, dim=16)
    feats = {k: torch.randn(2, 4, 32 // 2**i, 48 // 2**i) for i, k in enumerate(("0", "1", "2", "3"))}
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 30.0], [40.0, 50.0, 90.0, 120.0]]), torch.zeros(0, 4)]
    out = head(feats, boxes, [(128, 192), (128, 192)])
    assert out.shape == (2, 16)
    unit = TrackHead(in_channels=4, dim=16, normalize=True)(feats, boxes, [(128, 192), (128, 192)])
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))


def test_empty_memory_opens_new_ids_in_detection_order():
    mem = TrackMemory.empty(2, next_id=5)
    res = match_tracks(*_dets([[1, 0], [0, 1]], [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [0.9, 0.8]), mem)
    assert res.ids.tolist() == [5, 6] and res.is_new.tolist() == [True, True] and res.next_id == 7


def test_matching_score_formula():
    mem = _memory([[2.0, 0.0]], [[0, 0, 10, 10]], [1], [3], 4)
    emb, boxes, labels, scores = _dets([[1.0, 0.0]], [[0, 0, 10, 5]], [1], [0.5])
    s = matching_scores(emb, boxes, labels, scores, mem, MatchWeights())
    log_p = torch.log_softmax(torch.tensor([0.0, 2.0]), 0)
    expected = torch.tensor([log_p[0] + math.log(0.5) + 0.0 + 10.0, log_p[1] + math.log(0.5) + 2.0 * 0.5 + 10.0])
    torch.testing.assert_close(s[0], expected)


def test_iou_term_picks_the_overlapping_track_when_appearance_is_equal():
    mem = _memory([[1.0, 0.0], [1.0, 0.0]], [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [1, 2], 3)
    res = match_tracks(*_dets([[3.0, 0.0]], [[51, 50, 61, 60]], [1], [0.9]), mem)
    assert res.ids.tolist() == [2]
    res = match_tracks(*_dets([[3.0, 0.0]], [[1, 0, 11, 10]], [1], [0.9]), mem)
    assert res.ids.tolist() == [1]


def test_label_term_keeps_class_consistency():
    # appearance slightly favours track 1 (label 2), but the detection is label 1 like track 2
    mem = _memory([[3.0, 0.0], [2.5, 0.0]], [[0, 0, 10, 10], [0, 0, 10, 10]], [2, 1], [1, 2], 3)
    res = match_tracks(*_dets([[1.0, 0.0]], [[0, 0, 10, 10]], [1], [0.9]), mem)
    assert res.ids.tolist() == [2]
    no_label = match_tracks(*_dets([[1.0, 0.0]], [[0, 0, 10, 10]], [1], [0.9]), mem, MatchWeights(label=0.0))
    assert no_label.ids.tolist() == [1]


def test_new_object_column_wins_for_a_dissimilar_detection():
    mem = _memory([[5.0, 0.0]], [[0, 0, 10, 10]], [1], [7], 8)
    res = match_tracks(*_dets([[-5.0, 0.0]], [[100, 100, 110, 110]], [1], [0.9]), mem)
    assert res.ids.tolist() == [8] and res.is_new.tolist() == [True] and res.next_id == 9


def test_conflict_goes_to_the_higher_score_and_the_loser_opens_a_new_id():
    mem = _memory([[4.0, 0.0]], [[0, 0, 10, 10]], [1], [3], 4)
    emb, boxes, labels, scores = _dets([[1.0, 0.0], [1.0, 0.0]], [[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [0.3, 0.9])
    res = match_tracks(emb, boxes, labels, scores, mem)
    assert res.ids.tolist() == [4, 3]  # the 0.9 detection keeps id 3
    assert res.is_new.tolist() == [True, False] and res.next_id == 5


def test_update_memory_keeps_latest_state_running_max_area_and_ages_out():
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2], [1, 2], 3)
    emb, boxes, labels, scores = _dets([[0.5, 0.5], [-9.0, -9.0]], [[2, 2, 12, 12], [80, 80, 90, 90]], [1, 2], [0.9, 0.9])
    res = match_tracks(emb, boxes, labels, scores, mem)
    assert res.ids.tolist() == [1, 3]
    new = update_memory(mem, res, emb, boxes, labels, torch.tensor([40.0, 60.0]), frame=5, max_age_frames=3)
    # id 2 was last seen at frame 0 (> 3 frames ago): forgotten; id 1 updated; id 3 appended
    assert new.ids.tolist() == [1, 3] and new.next_id == 4
    torch.testing.assert_close(new.boxes_xyxy[0], torch.tensor([2.0, 2.0, 12.0, 12.0]))
    torch.testing.assert_close(new.embeddings, torch.tensor([[0.5, 0.5], [-9.0, -9.0]]))
    assert new.last_seen.tolist() == [5, 5] and new.max_area.tolist() == [100.0, 60.0]
    levels = occlusion_levels(torch.tensor([40.0, 60.0]), res.ids, new)
    torch.testing.assert_close(levels, torch.tensor([0.6, 0.0]))
