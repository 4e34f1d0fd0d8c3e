# Kernels of core/ops: float forward vs a double forward, backward vs double finite differences.
zb_test(test_gradcheck test_gradcheck.c)
