"""loopml.serving"""
