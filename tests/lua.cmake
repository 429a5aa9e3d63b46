# Lua-side suites, included from CMakeLists.txt: the wahook_pure module (the runtime's pure C
# functions as a Lua 5.4 module, so specs run the real code) and one ctest per busted spec in
# scripts/spec, labelled "lua".

# A sanitized module cannot be loaded into the plain lua5.4 interpreter, so those builds skip
# the Lua suites; the plain build runs them.
if(WH_SANITIZE OR WH_FUZZ)
  return()
endif()

find_program(WH_LUA_BIN NAMES lua5.4)
find_program(WH_BUSTED_BIN NAMES busted)

add_library(wahook_pure MODULE
  ${CMAKE_SOURCE_DIR}/runtime/lua_pure.c
  ${CMAKE_SOURCE_DIR}/runtime/tz.c
  ${CMAKE_SOURCE_DIR}/runtime/common.c)
set_target_properties(wahook_pure PROPERTIES
  PREFIX ""
  OUTPUT_NAME wahook_pure
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/lua)
# Lua headers only: the interpreter that loads the module provides the lua_* symbols, and a
# second copy of liblua inside the module would break it.
target_include_directories(wahook_pure PRIVATE ${CMAKE_SOURCE_DIR}/include ${LUA_INCLUDE_DIRS})
target_link_libraries(wahook_pure PRIVATE Threads::Threads)

# busted's --lua=lua5.4 re-runs itself through a shell without quoting, which splits the ';' of
# a search path and globs its '?'. Starting the busted script with lua5.4 directly is what that
# switch does, minus the shell.
file(GLOB WH_LUA_SPECS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/scripts/spec/*_spec.lua)
foreach(spec ${WH_LUA_SPECS})
  get_filename_component(name ${spec} NAME_WE)
  add_test(NAME lua.${name}
    COMMAND ${WH_LUA_BIN} ${WH_BUSTED_BIN}
      --cpath=${CMAKE_BINARY_DIR}/lua/?.so
      --lpath=${CMAKE_SOURCE_DIR}/scripts/?.lua
      --lpath=${CMAKE_SOURCE_DIR}/scripts/?/init.lua
      ${spec}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(lua.${name} PROPERTIES LABELS lua TIMEOUT 120
    ENVIRONMENT "WH_FIXTURES_DIR=${WH_FIXTURES_DIR};WH_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endforeach()
