# The layering of docs/ARCHITECTURE.md (which directory may include what; file and function
# sizes), checked on the sources: tests/check_layers.sh.
add_test(NAME check_layers COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/check_layers.sh ${CMAKE_SOURCE_DIR})
