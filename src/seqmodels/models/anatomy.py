"""Every weight of a model under its textbook name, grouped by layer: what
``seqmodels-summary`` prints (``describe``), each row a slice of a real tensor, and each layer's
counting formula checked against them.

Torch stores a recurrent layer's gates stacked: ``weight_ih`` is (G*H, I) and ``weight_hh``
(G*H, H), with G = 1 (Elman), 3 (GRU: r, z, n) or 4 (LSTM: i, f, g, o), and it keeps two bias
vectors per gate (``bias_ih`` and ``bias_hh``) where the equations have one. So a layer has
G*(H*(I+H) + 2H) parameters.

minGRU and minLSTM (``parallel_cells``) have no ``weight_hh``: their G = 2 (z, h̃) or 3 (f, i, h̃)
gates read x_t only, with one bias each, so a layer has G*H*(I+1) parameters.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from seqmodels.models.embeddings import WordEmbeddings
from seqmodels.models.encoder import RNNEncoder
from seqmodels.models.parallel_cells import PARALLEL_CELLS, MinRNN

GATES = {"RNN": ("",), "GRU": ("r", "z", "n"), "LSTM": ("i", "f", "g", "o")}
EQUATIONS = {
    "RNN": ["h_t = {g}(W x_t + U h_(t-1) + b)"],
    "GRU": ["r_t = σ(W_r x_t + U_r h_(t-1) + b_r)                reset gate",
            "z_t = σ(W_z x_t + U_z h_(t-1) + b_z)                update gate",
            "n_t = tanh(W_n x_t + b_in + r_t ⊙ (U_n h_(t-1) + b_hn))",
            "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_(t-1)"],
    "LSTM": ["i_t = σ(W_i x_t + U_i h_(t-1) + b_i)                input gate",
             "f_t = σ(W_f x_t + U_f h_(t-1) + b_f)                forget gate",
             "g_t = tanh(W_g x_t + U_g h_(t-1) + b_g)             candidate",
             "o_t = σ(W_o x_t + U_o h_(t-1) + b_o)                output gate",
             "c_t = f_t ⊙ c_(t-1) + i_t ⊙ g_t,   h_t = o_t ⊙ tanh(c_t)"],
}
PARALLEL_NAMES = {"mingru": "minGRU", "minlstm": "minLSTM"}
CANDIDATE = "h̃_t = g(W_h x_t + b_h),   g(v) = v + 0.5 (v ≥ 0), σ(v) (v < 0)   positive candidate"
EQUATIONS |= {
    "minGRU": ["z_t = σ(W_z x_t + b_z)                             update gate: x_t only",
               CANDIDATE,
               "h_t = (1 - z_t) ⊙ h_(t-1) + z_t ⊙ h̃_t              linear in h: a parallel scan"],
    "minLSTM": ["f_t = σ(W_f x_t + b_f),   i_t = σ(W_i x_t + b_i)   forget, input gates: x_t only",
                CANDIDATE,
                "f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)",
                "h_t = f'_t ⊙ h_(t-1) + i'_t ⊙ h̃_t                 linear in h: a parallel scan"],
}
BIAS_NOTE = ("torch keeps two bias vectors per gate (bias_ih, bias_hh) where the equations have "
             "one: 2H per gate")


@dataclass
class Row:
    symbol: str  # the textbook name: W_i, U, b, E, V, c
    tensor: str  # where it lives: the torch parameter and the slice of it
    shape: str
    count: int


@dataclass
class Block:
    """One layer: a module, or one layer and direction of a recurrent one."""

    module: str  # the top-level module it belongs to, e.g. "encoder"
    title: str
    equations: list[str] = field(default_factory=list)
    formula: str = ""  # the counting formula, numbers filled in
    rows: list[Row] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(row.count for row in self.rows)


def dims(*sizes: int) -> str:
    return " × ".join(str(s) for s in sizes)


def checked(formula: str, value: int, block: Block) -> str:
    """``formula = value``; a disagreement with the tensors is printed, never hidden."""
    return f"{formula} = {value:,}" + ("" if value == block.count else
                                       f"   MISMATCH: the tensors hold {block.count:,}")


# -- reading a model ------------------------------------------------------------------------------
def rnn_blocks(module: str, path: str, title: str, rnn: nn.RNNBase,
               place: tuple | None) -> list[Block]:
    """A block per layer and direction of a torch RNN, GRU or LSTM. ``place`` is (layer,
    direction, directions) when ``rnn`` is one layer-direction of an ``RNNEncoder``, whose
    modules are single-layer and unidirectional."""
    cell = "RNN" if rnn.mode.startswith("RNN") else rnn.mode  # RNN_TANH, RNN_RELU, GRU, LSTM
    gates, hidden = GATES[cell], rnn.hidden_size
    params = dict(rnn.named_parameters(recurse=False))
    blocks = []
    for layer in range(rnn.num_layers):
        for direction in range(2 if rnn.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w, u = params.pop("weight_ih" + suffix), params.pop("weight_hh" + suffix)
            b_ih, b_hh = params.pop("bias_ih" + suffix, None), params.pop("bias_hh" + suffix, None)
            number, backward, directions = place or (layer, direction, 1 + rnn.bidirectional)
            where = f"{title} layer {number + 1}"
            if directions == 2:
                where += ", backward" if backward else ", forward"
            block = Block(module, f"{where}: {cell}, I={w.size(1)} → H={hidden}   ({path})")
            block.equations = [e.replace("{g}", getattr(rnn, "nonlinearity", "tanh"))
                               for e in EQUATIONS[cell]] + ([BIAS_NOTE] if b_ih is not None else [])
            for index, gate in enumerate(gates):
                rows = slice(index * hidden, (index + 1) * hidden)
                part = f"[{rows.start}:{rows.stop}]" if len(gates) > 1 else ""
                sub = f"_{gate}" if gate else ""
                for symbol, name, tensor in (("W", "weight_ih", w), ("U", "weight_hh", u)):
                    block.rows.append(Row(symbol + sub, f"{name}{suffix}{part}",
                                          dims(*tensor[rows].shape), tensor[rows].numel()))
                if b_ih is not None:
                    # The GRU's candidate keeps b_hn inside the reset product: two biases there.
                    block.rows.append(Row("b_in, b_hn" if gate == "n" else "b" + sub,
                                          f"bias_ih{suffix}{part} + bias_hh{suffix}{part}",
                                          f"{hidden} + {hidden}",
                                          b_ih[rows].numel() + b_hh[rows].numel()))
            block.formula = rnn_formula(block, len(gates), hidden, w.size(1), b_ih is not None)
            blocks.append(block)
    if params:  # what the equations do not name (an LSTM projection, say) is still counted
        blocks.append(generic_block(module, f"{title} (other)", rnn, params.items()))
    return blocks


def parallel_blocks(module: str, path: str, title: str, rnn: MinRNN) -> list[Block]:
    """A block per layer and direction of a minGRU / minLSTM stack: one (W, b) per gate."""
    cell, gates, hidden = PARALLEL_NAMES[rnn.mode], PARALLEL_CELLS[rnn.mode], rnn.hidden_size
    blocks = []
    for layer in range(rnn.num_layers):
        for direction in range(2 if rnn.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w, b = getattr(rnn, "weight_ih" + suffix), getattr(rnn, "bias_ih" + suffix)
            where = f"{title} layer {layer + 1}"
            if rnn.bidirectional:
                where += ", backward" if direction else ", forward"
            block = Block(module, f"{where}: {cell}, I={w.size(1)} → H={hidden}   ({path})",
                          list(EQUATIONS[cell]))
            for index, gate in enumerate(gates):
                rows = slice(index * hidden, (index + 1) * hidden)
                part = f"[{rows.start}:{rows.stop}]"
                block.rows.append(Row(f"W_{gate}", f"weight_ih{suffix}{part}",
                                      dims(*w[rows].shape), w[rows].numel()))
                block.rows.append(Row(f"b_{gate}", f"bias_ih{suffix}{part}", dims(hidden),
                                      b[rows].numel()))
            i, g = w.size(1), len(gates)
            block.formula = checked(f"{g}·H·(I+1) = {g}·{hidden}·({i}+1)", g * hidden * (i + 1),
                                    block)
            blocks.append(block)
    return blocks


def rnn_formula(block: Block, gates: int, h: int, i: int, bias: bool) -> str:
    symbols, numbers = "H·(I+H)", f"{h}·({i}+{h})"
    if bias:
        symbols, numbers = symbols + " + 2H", numbers + f" + 2·{h}"
    if gates > 1:
        symbols, numbers = f"{gates}·({symbols})", f"{gates}·({numbers})"
    value = gates * (h * (i + h) + (2 * h if bias else 0))
    return checked(f"{symbols} = {numbers}", value, block)


def embedding_block(module: str, title: str, embedding: nn.Embedding) -> Block:
    words, dim = embedding.weight.shape
    block = Block(module, f"{title}: embedding, V={words} entries × D={dim}",
                  ["x_t = E[w_t]   (row w_t of E)"])
    block.rows.append(Row("E", "weight", dims(words, dim), embedding.weight.numel()))
    block.formula = checked(f"V·D = {words}·{dim}", words * dim, block)
    return block


def pretrained_block(module: str, title: str, embeddings: WordEmbeddings) -> Block:
    """The fixed pretrained table: a buffer (counted as no parameter), and what it covers."""
    words, dim = embeddings.pretrained.shape
    trained = embeddings.trained_vocab_size
    found = int(embeddings.found[:trained].sum())
    how = "frozen" if embeddings.freeze else "fine-tuned"
    block = Block(module, f"{title}: pretrained word vectors, V={words} entries × D={dim}",
                  [f"x_t = P[w_t] + E[w_t]   (P fixed; E trained, {how}, zero for added words)",
                   f"P covers {found:,} of the {trained - 2:,} training words "
                   f"({100 * found / max(trained - 2, 1):.1f}%) and {words - trained:,} more "
                   "words from the vectors file"])
    block.rows.append(Row("P", "pretrained (a buffer, not trained)", dims(words, dim), 0))
    block.formula = "0 (the vectors file's, saved with the model)"
    return block


def linear_block(module: str, title: str, linear: nn.Linear) -> Block:
    out, inputs = linear.weight.shape
    block = Block(module, f"{title}: hidden-to-output, H={inputs} → O={out}",
                  ["o = V h + c,   ŷ = softmax(o)"])
    block.rows.append(Row("V", "weight", dims(out, inputs), linear.weight.numel()))
    if linear.bias is not None:
        block.rows.append(Row("c", "bias", dims(out), linear.bias.numel()))
        block.formula = checked(f"O·(H+1) = {out}·({inputs}+1)", out * (inputs + 1), block)
    else:
        block.formula = checked(f"O·H = {out}·{inputs}", out * inputs, block)
    return block


def generic_block(module: str, title: str, owner: nn.Module, params: Iterable) -> Block:
    rows = [Row("", name, dims(*p.shape), p.numel()) for name, p in params]
    return Block(module, f"{title}: {type(owner).__name__}", rows=rows)


def network_of(model: nn.Module) -> nn.Module:
    """A task module's plain network (``model.net``, which holds every weight), named from
    itself; any other module as it is."""
    return getattr(model, "net", model)


def describe(model: nn.Module) -> list[Block]:
    """Every parameter of ``model`` (a task's network) exactly once, grouped into layers, in
    module order."""
    model = network_of(model)
    places = {}  # id(torch RNN) -> (encoder path, layer, direction, directions)
    for path, module in model.named_modules():
        if isinstance(module, RNNEncoder):
            places[id(module.rnn)] = (path, None)
    seen, blocks = {}, []  # id -> full name: a parameter that two modules share counts once
    for path, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        own = [(name, p) for name, p in params if id(p) not in seen]
        shared = [(name, p) for name, p in params if id(p) in seen]
        seen.update((id(p), f"{path}.{name}".lstrip(".")) for name, p in own)
        if isinstance(module, WordEmbeddings) and module.pretrained is not None:
            blocks.append(pretrained_block(path.split(".")[0], path, module))
        if not params:
            continue
        top = path.split(".")[0] or "(model)"
        if shared:  # tied weights: listed where they are shared, counted where first seen
            block = generic_block(top, path, module, own)
            block.rows += [Row("", f"{name} = {seen[id(p)]} (shared, counted there)",
                               dims(*p.shape), 0) for name, p in shared]
            blocks.append(block)
        elif isinstance(module, nn.RNNBase):
            title, place = places.get(id(module), (path, None))
            blocks.extend(rnn_blocks(top, path, title, module, place))
        elif isinstance(module, MinRNN):
            blocks.extend(parallel_blocks(top, path, places.get(id(module), (path,))[0], module))
        elif isinstance(module, nn.Embedding):
            blocks.append(embedding_block(top, path, module))
        elif isinstance(module, nn.Linear):
            blocks.append(linear_block(top, path, module))
        else:
            blocks.append(generic_block(top, path or "(model)", module, own))
    shown = set()  # each set of equations once: the titles say which cell a layer is
    for block in blocks:
        if tuple(block.equations) in shown:
            block.equations = []
        shown.add(tuple(block.equations))
    return blocks


def module_totals(model: nn.Module, blocks: list[Block]) -> list[tuple[str, str, int]]:
    """(name, type, parameters) of each top-level module that has parameters."""
    counts: dict[str, int] = {}
    for block in blocks:
        counts[block.module] = counts.get(block.module, 0) + block.count
    children = dict(network_of(model).named_children())
    return [(name, type(children[name]).__name__ if name in children else type(model).__name__,
             count) for name, count in counts.items()]
