import type { Tensor, Stream } from './native.js';

export interface MoeOps {}
