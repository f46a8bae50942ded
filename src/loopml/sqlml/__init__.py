"""loopml.sqlml"""
