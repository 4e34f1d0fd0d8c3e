# Tests that feed malformed or missing input (files, configs, flags): tests/run-tests runs
# them a second time in an AddressSanitizer + UBSan build (label "badinput").
foreach(t cli_dump cli_eval cli_generate test_tokenizer cli_tokenize test_data cli_data cli_compose test_gradcheck cli_faults)
  if(TEST ${t})
    set_property(TEST ${t} APPEND PROPERTY LABELS badinput)
  endif()
endforeach()
