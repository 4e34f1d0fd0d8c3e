# SMART (SPEC.md §6): the placement rule against the released plans and a brute-force search on
# made-up scores; the KL scores against whole-model forwards of assembled hybrids.
zb_test(test_smart test_smart.c ${ZB_FIXTURES} ${CMAKE_CURRENT_SOURCE_DIR})
