/* cuda_train.h — host-side glue between the model / optimizer structs and the device kernels. */
#ifndef ZB_CUDA_TRAIN_H
#define ZB_CUDA_TRAIN_H

#include "cuda_ops.h"
#include "optim.h"

/* The trainable float32 parameters of o as device segments (lr_mult, weight decay each). */
int zb_cuda_segs_from_adamw(zb_cuda_segs **out, const zb_adamw *o, const zb_model *m);

#endif
