"""benchmarks/chunk_train.py: the crossover lengths that form='auto' stores (no GPU needed)."""
from benchmarks.chunk_train import crossover


def test_crossover_is_the_length_from_which_chunk_always_wins():
    ms = {("Lit", 197): (1.0, 2.0), ("Lit", 785): (1.0, 2.0),          # chunk faster everywhere
          ("D", 197): (3.0, 1.0), ("D", 785): (1.0, 2.0), ("D", 3137): (1.0, 5.0),
          ("S", 197): (1.0, 2.0), ("S", 785): (3.0, 2.0), ("S", 3137): (1.0, 4.0),  # a win, a loss, then wins
          }
    rows = [(L, 1, f"{kind} {form}", t, 0.0, 0.0) for (kind, L), ts in ms.items()
            for form, t in zip(("chunk", "attention"), ts)]
    rows.append((3137, 1, "SDPA flash", 0.5, 0.0, 0.0))
    assert crossover(rows) == {"Lit": 197, "Decay": 785, "Selective": 3137}
    slow = [r for r in rows if (r[0], r[2]) != (3137, "D chunk")]
    slow.append((3137, 1, "D chunk", 9.0, 0.0, 0.0))
    assert "Decay" not in crossover(slow)  # never caught up at the longest length: left out (auto keeps attention)
