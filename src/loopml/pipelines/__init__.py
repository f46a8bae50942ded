"""loopml.pipelines"""
