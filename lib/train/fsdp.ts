/**
 * ZeRO-3 / FSDP parameter sharding of a Transformer over the ranks of the process group (used by
 * ZeroOptimizer with stage 'zero3', lib/train/zero.ts, which updates the shards).
 *
 * Units: each decoder block ('layers.i', a MoD block with its router included) is one unit; the
 * rest (embedding, final norm, LM head) is the root unit. A block unit's parameters are
 * flattened into one float32 vector (lib/train/flat.ts, the block's parameters in model order)
 * split over R ranks: rank r holds S = ceil(n / R) elements (zero padded) as `shard`, a leaf with
 * requiresGrad. Between calls the block's parameters in the model are released: the model's
 * own tensors, disposed (they keep their name, shape and dtype; using one fails loudly).
 *
 * Forward of block i (Transformer.blockRunner): all-gather the unit's shard into fresh parameter
 * tensors, set them into the block, run the block under noGrad, put the released tensors back (the
 * gathered tensors are freed), and record ONE tape node with inputs (block input x, shard). Its
 * backward: restore the generator to its state before the block's forward (the same Gumbel noise),
 * gather the parameters again as leaves, recompute the block with grad from a detached view of x
 * (MoE routing statistics off and no routing observer: nothing is counted twice), run
 * backward(block output, dy) on that sub-graph, reduce-scatter (sum) the full parameter gradients
 * into this rank's [S] gradient, free everything, and return the input gradient. The tape adds the
 * [S] gradients of a step's micro-batches into shard.grad: ZeRO-3 reduce-scatters every
 * micro-batch (holding no full gradient between micro-batches is the point of sharding them).
 * Recompute cost: one more forward of every block per micro-batch, about a third more FLOPs.
 *
 * The root unit is not gathered per call: its parameters stay in the model on every rank (as
 * FSDP's root with reshard_after_forward off), its gradients are reduce-scattered and its AdamW
 * state is sharded like every unit's; after the update the new parameters are all-gathered into
 * the model. Evaluation and generation run as usual: the runner gathers each block (without a
 * tape node under noGrad or in causal mode).
 */
import { tidy, untrack } from '../autograd/scope';
import { backward, gradEnabled, noGrad, record } from '../autograd/tape';
import { zeros } from '../creation';
import { allGather, allReduce, isInitialized, reduceScatter } from '../distributed/process_group';
import { MomaError } from '../errors';
import { HostTensor, hostToTensor } from '../io/safetensors';
import { MoEFeedForward } from '../model/layers';
import { BlockRun, Transformer } from '../model/transformer';
import { Module } from '../nn/module';
import { Tensor } from '../tensor';
import { flatLayout, FlatLayout, flatSlice, piecesOf, shardRange } from './flat';

/** One FSDP unit: its flat layout (full parameter names) and this rank's range of it. */
export interface FsdpUnit {
  /** 'layers.i' (a block) or 'root'. */
  readonly name: string;
  readonly layout: FlatLayout;
  /** This rank's range [from, to) of the unit's flat space (to − from ≤ layout.shardSize). */
  readonly from: number;
  readonly to: number;
  /** A block unit's parameters on this rank, float32 [shardSize] zero padded, a leaf with requiresGrad; null for the root. */
  shard: Tensor | null;
}

export class FullyShardedModel {
  /** The root unit first, then the blocks in order. */
  readonly units: FsdpUnit[];
  private readonly released = new Map<string, Tensor>();
  private readonly device: string;

  constructor(readonly model: Transformer, readonly split: { rank: number; ranks: number }) {
    if (!(model instanceof Transformer)) throw new MomaError('ERR_ARG', 'ZeRO-3: the model must be a Transformer (its decoder blocks are the FSDP units)');
    if (!isInitialized()) throw new MomaError('ERR_DIST', 'ZeRO-3: no process group: start the ranks with `moma launch` (or torchrun, srun, mpirun) and call `await distributed.init()` first');
    if (model.blockRunner !== null) throw new MomaError('ERR_ARG', 'ZeRO-3: the model is already sharded (its blockRunner is set)');
    const named = model.namedParameters();
    for (const [name, p] of named) {
      if (p.dtype !== 'float32') throw new MomaError('ERR_ARG', `ZeRO-3: parameters must be float32, '${name}' is ${p.dtype}`);
    }
    this.device = model.config.device;
    const blockOf = (name: string): number => {
      const m = /^layers\.(\d+)\./.exec(name);
      return m === null ? -1 : Number(m[1]);
    };
    const groups = Array.from({ length: model.config.layers + 1 }, () => new Map<string, Tensor>());
    for (const [name, p] of named) groups[blockOf(name) + 1]!.set(name, p);
    this.units = groups.map((params, u) => {
      const layout = flatLayout(params, split.ranks);
      const { from, to } = shardRange(layout, split.rank);
      const name = u === 0 ? 'root' : `layers.${u - 1}`;
      if (u === 0) return { name, layout, from, to, shard: null };
      const shard = untrack(noGrad(() => tidy(() => flatSlice(layout, [...params.values()], from, from + layout.shardSize, layout.shardSize, this.device))));
      shard.requiresGrad = true;
      return { name, layout, from, to, shard };
    });
    // the block parameters leave the model: each stays in the model as its own disposed (released) tensor
    for (const unit of this.blockUnits()) {
      for (const entry of unit.layout.entries) {
        const p = named.get(entry.name)!;
        p.grad?.dispose();
        p.grad = null;
        p.dispose();
        this.released.set(entry.name, p);
      }
    }
    model.blockRunner = (block, index, x, run) => this.runBlock(this.units[index + 1]!, block, x, run);
  }

  /** The block units, in layer order. */
  blockUnits(): FsdpUnit[] {
    return this.units.slice(1);
  }

  /** The root unit (embedding, final norm, LM head): its parameters stay in the model. */
  get root(): FsdpUnit {
    return this.units[0]!;
  }

  /** A block unit's full parameters, all-gathered (fresh float32 tensors, not in any scope), by name. */
  private gather(unit: FsdpUnit): Map<string, Tensor> {
    // in a scope of its own: a reshape shares its input's storage, so the slices must be freed here
    const params = noGrad(() => tidy(() => {
      const flat = allGather(unit.shard!);
      return new Map(unit.layout.entries.map((e) => [e.name, flat.slice(0, e.offset, e.offset + e.numel).reshape(e.shape)]));
    }));
    for (const t of params.values()) untrack(t);
    return params;
  }

  private install(params: Map<string, Tensor>): void {
    for (const [name, t] of params) this.model.setParameter(name, t);
  }

  /** Puts a block's released tensors back into the model; the gathered tensors and their gradients are freed. */
  private release(unit: FsdpUnit): void {
    const named = this.model.namedParameters();
    for (const entry of unit.layout.entries) {
      const t = named.get(entry.name)!;
      t.grad?.dispose();
      t.grad = null;
      this.model.setParameter(entry.name, this.released.get(entry.name)!);
    }
  }

  /** Block forward with its parameters gathered for the call; in grad mode one tape node whose backward recomputes the block. */
  private runBlock(unit: FsdpUnit, block: Module, x: Tensor, run: BlockRun): Tensor {
    const generator = run.generator;
    const before = generator?.getState();
    const recording = gradEnabled();
    this.install(this.gather(unit));
    let y: Tensor;
    try {
      y = recording ? noGrad(() => tidy(() => run.forward(x, false))) : run.forward(x, false);
      if (recording) this.keepRoutingStats(block);
    } finally {
      this.release(unit);
    }
    if (!recording) return y;
    // a MoD block with no row to run passes x through: still one node (as a view of x), so that
    // every rank runs the same collectives in its backward
    if (y === x) y = x.reshape([...x.shape]);
    return record(y, [x, unit.shard!], (dy) => this.blockBackward(unit, block, x, dy, run, before));
  }

  /** The MoE layers of a block. */
  private moeLayers(block: Module): MoEFeedForward[] {
    return [...block.modules()].filter((m): m is MoEFeedForward => m instanceof MoEFeedForward);
  }

  /** Routing statistics a block kept (kept past the runner's own scope, as they are past the step's without it). */
  private keepRoutingStats(block: Module): void {
    for (const ffn of this.moeLayers(block)) {
      if (ffn.lastStats === null) continue;
      untrack(ffn.lastStats.expertStats);
      untrack(ffn.lastStats.groupStats);
    }
  }

  /** The block's backward (module comment): [dx, this rank's [S] gradient of the unit]. */
  private blockBackward(unit: FsdpUnit, block: Module, x: Tensor, dy: Tensor, run: BlockRun, before: { seed: string; offset: string } | undefined): Tensor[] {
    if (!gradEnabled()) throw new MomaError('ERR_ARG', `ZeRO-3: the backward of block ${unit.name} recomputes it and needs grad mode: do not call backward() under noGrad`);
    const generator = run.generator;
    const after = generator?.getState();
    if (before !== undefined) generator!.setState(before);
    const stats = this.moeLayers(block).map((ffn) => [ffn, ffn.collectStats] as const);
    for (const [ffn] of stats) ffn.collectStats = false;
    const params = this.gather(unit);
    this.install(params);
    const input = x.reshape([...x.shape]); // a view of x's storage with no tape history
    input.requiresGrad = true;
    try {
      const passthrough = tidy(() => {
        const out = run.forward(input, true);
        if (out === input) return true;
        backward(out, dy);
        return false;
      });
      const { layout } = unit;
      const span = layout.ranks * layout.shardSize;
      const named = this.model.namedParameters();
      const grads = layout.entries.map((e) => named.get(e.name)!.grad);
      const shardGrad = noGrad(() => tidy(() => reduceScatter(flatSlice(layout, grads, 0, span, span, this.device), { op: 'sum' })));
      const dx = passthrough ? dy : input.grad ?? zeros(x.shape, { device: x.device });
      if (!passthrough) input.grad = null;
      return [dx, shardGrad];
    } finally {
      this.release(unit);
      input.grad?.dispose();
      input.dispose();
      for (const [ffn, collect] of stats) ffn.collectStats = collect;
      if (after !== undefined) generator!.setState(after);
    }
  }

  /** Replaces a block unit's shard (an optimizer step's result: float32 [shardSize]); the old one is freed. */
  setShard(unit: FsdpUnit, shard: Tensor): void {
    if (unit.shard === null) throw new MomaError('ERR_INTERNAL', 'FullyShardedModel.setShard: the root unit has no shard');
    unit.shard.grad?.dispose();
    unit.shard.dispose();
    shard.requiresGrad = true;
    unit.shard = shard;
  }

  /**
   * Loads full parameters (host tensors by name, checked by the caller): the root's into the
   * model, each block unit's range of this rank into its shard.
   */
  loadParameters(parameters: Map<string, HostTensor>): void {
    for (const entry of this.root.layout.entries) this.model.setParameter(entry.name, hostToTensor(parameters.get(entry.name)!, this.device));
    for (const unit of this.blockUnits()) {
      const values = new Float32Array(unit.layout.shardSize);
      for (const { entry, begin, end } of piecesOf(unit.layout, unit.from, unit.to)) {
        values.set((parameters.get(entry.name)!.data as Float32Array).subarray(begin, end), entry.offset + begin - unit.from);
      }
      const shard = hostToTensor({ dtype: 'F32', shape: [values.length], data: values }, this.device);
      this.setShard(unit, untrack(shard));
    }
  }

  /**
   * Every parameter of the model on the host, gathered unit by unit (a collective: every rank
   * calls it); only `reader` reads its values, the other ranks get null.
   */
  async hostParameters(reader: boolean): Promise<Map<string, HostTensor> | null> {
    const out = new Map<string, HostTensor>();
    const named = this.model.namedParameters();
    const read = async (name: string, t: Tensor): Promise<void> => {
      out.set(name, { dtype: 'F32', shape: t.shape.slice(), data: (await t.toArray()) as Float32Array });
    };
    for (const unit of this.units) {
      if (unit.shard === null) {
        if (reader) for (const entry of unit.layout.entries) await read(entry.name, named.get(entry.name)!);
        continue;
      }
      const params = this.gather(unit);
      try {
        if (reader) for (const [name, t] of params) await read(name, t);
      } finally {
        for (const t of params.values()) t.dispose();
      }
    }
    if (!reader) return null;
    return new Map([...named.keys()].map((name) => [name, out.get(name)!]));
  }

  /**
   * What a finite check of the parameters reads, the same on every rank (a collective): per block
   * unit one scalar, Σ(shard · 0) summed over the ranks (0, or NaN where any rank's shard holds a
   * NaN or ±inf), then the root's parameters. dispose() frees the scalars.
   */
  finiteProbes(): { named: [string, Tensor][]; dispose(): void } {
    const probes = this.blockUnits().map((unit): [string, Tensor] => [
      `the parameters of block ${unit.name}`,
      untrack(noGrad(() => tidy(() => allReduce(unit.shard!.mul(0).sum().reshape([1]), { op: 'sum' })))),
    ]);
    const named = this.model.namedParameters();
    const root = this.root.layout.entries.map((e): [string, Tensor] => [`parameter '${e.name}'`, named.get(e.name)!]);
    return { named: [...root, ...probes], dispose: () => probes.forEach(([, t]) => t.dispose()) };
  }

  /** Takes the hook off the model and frees the shards (the model's block parameters stay released). */
  dispose(): void {
    if (this.model.blockRunner !== null) this.model.blockRunner = null;
    for (const unit of this.blockUnits()) {
      unit.shard?.grad?.dispose();
      unit.shard?.dispose();
    }
  }
}
