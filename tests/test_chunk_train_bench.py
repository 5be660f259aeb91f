"""benchmarks/chunk_train.py: the crossover lengths that form='auto' stores (no GPU needed)."""
from benchmarks.chunk_train import crossover, table


def test_crossover_is_the_length_from_which_chunk_always_wins():
    ms = {("Lit", 197): (1.0, 2.0), ("Lit", 785): (1.0, 2.0),          # chunk faster everywhere
          ("Lit-u", 197): (3.0, 1.0), ("Lit-u", 785): (3.0, 2.0), ("Lit-u", 3137): (1.0, 2.0),  # unnormalised Lit
          ("D", 197): (3.0, 1.0), ("D", 785): (1.0, 2.0), ("D", 3137): (1.0, 5.0),
          ("S", 197): (1.0, 2.0), ("S", 785): (3.0, 2.0), ("S", 3137): (1.0, 4.0),  # a win, a loss, then wins
          }
    rows = [(L, 1, f"{kind} {form}", t, 0.0, 0.0) for (kind, L), ts in ms.items()
            for form, t in zip(("chunk", "attention"), ts)]
    rows.append((3137, 1, "SDPA flash", 0.5, 0.0, 0.0))
    assert crossover(rows) == {"Lit": 197, "Lit-unnormalised": 3137, "Decay": 785, "Selective": 3137}
    slow = [r for r in rows if (r[0], r[2]) != (3137, "D chunk")]
    slow.append((3137, 1, "D chunk", 9.0, 0.0, 0.0))
    assert "Decay" not in crossover(slow)  # never caught up at the longest length: left out (auto keeps attention)


def test_table_one_row_per_length_with_each_form_against_sdpa():
    rows = [(197, 665, "SDPA flash", 1.0, 0.0, 0.5), (197, 665, "D chunk", 4.0, 0.0, 0.9),
            (197, 665, "D attention", 2.0, 0.0, 0.8), (3137, 41, "SDPA flash", 5.0, 0.0, 0.6),
            (3137, 41, "D chunk", 3.0, 0.0, 0.95), (3137, 41, "D attention", 10.0, 0.0, 0.85)]
    lines = table(rows).splitlines()
    assert "| L (B) | SDPA ms | D |" in lines
    assert "| 197 (665) | 1.00 | 4.00 · 2.00 |" in lines
    assert "| 3137 (41) | 5.00 | 0.60 · 2.00 |" in lines
    assert lines[-1] == "Peak GiB at L = 3137: SDPA 0.60, D 0.95 · 0.85"
